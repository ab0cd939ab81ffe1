//! The AWS Lambda Runtime API (`/2018-06-01/runtime/...`), as a Lambda
//! runtime interface client (`awslambdaric`, `aws-lambda-ric`,
//! `lambda_runtime`, ...) expects it, served to one instance on a loopback
//! port of its own: the port says which instance is asking, so a post for
//! another instance's call is refused. Plain HTTP/1.1, `TCP_NODELAY`, each
//! answer's head and body in one write.
//!
//! The instance pulls its calls: `invocation/next` long-polls this
//! instance's [`Mailbox`] and answers with the event and its
//! `Lambda-Runtime-*` headers; `invocation/{id}/response` and
//! `invocation/{id}/error` end the call; `init/error` reports a failed
//! set-up. The first `invocation/next` means the instance is ready.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::LambdaIdentity;
use crate::backend::{BackendError, result_json};

mod stream;

/// The API's version prefix, fixed by AWS.
const PREFIX: &str = "/2018-06-01/runtime/";

/// Largest error or init-error report read.
const MAX_REPORT: usize = 1 << 20;

/// One call for an instance: the event and what its headers say.
pub struct Delivery {
    pub call_id: String,
    /// The invocation request JSON.
    pub event: Bytes,
    /// `Lambda-Runtime-Deadline-Ms`.
    pub deadline_ms: u64,
    /// `Lambda-Runtime-Invoked-Function-Arn`.
    pub arn: String,
    /// `Lambda-Runtime-Trace-Id` (X-Ray form).
    pub trace_id: String,
    /// `Lambda-Runtime-Client-Context` (JSON).
    pub client_context: String,
}

/// The call's end, as the instance reported it.
pub type Reply = Result<Bytes, BackendError>;

/// An instance's side of the Runtime API: its next call, the call it is
/// running, and whether it has finished its set-up.
pub struct Mailbox {
    state: Mutex<MailState>,
    /// A call was put in the mailbox (or it closed).
    wake: Notify,
    readiness: watch::Sender<Readiness>,
    max_result: usize,
}

#[derive(Clone)]
enum Readiness {
    Starting,
    Ready,
    InitFailed(BackendError),
}

#[derive(Default)]
struct MailState {
    queued: Option<(Delivery, oneshot::Sender<Reply>)>,
    running: Option<(String, oneshot::Sender<Reply>)>,
    /// A streaming call's items go here as the instance posts them (its
    /// reply then only says how the stream ended).
    items: Option<(String, mpsc::Sender<Bytes>)>,
    /// The running call's response is being streamed in: a runtime may ask
    /// for its next call before its streamed post has been read to the end
    /// (Node's aws-lambda-ric does), which then waits for that end.
    streaming_in: bool,
    closed: bool,
}

impl Mailbox {
    /// Puts a call in the mailbox; the receiver gets its end. An instance
    /// takes one call at a time: its pool leases it to one call only.
    pub fn deliver(&self, delivery: Delivery) -> Result<oneshot::Receiver<Reply>, BackendError> {
        self.deliver_to(delivery, None)
    }

    /// Puts a streaming call in the mailbox: each item the instance
    /// streams (or its one result) goes to `items` as it comes; the
    /// receiver gets how the call ended (`Ok` with no bytes, or its error).
    pub fn deliver_streaming(
        &self,
        delivery: Delivery,
        items: mpsc::Sender<Bytes>,
    ) -> Result<oneshot::Receiver<Reply>, BackendError> {
        self.deliver_to(delivery, Some(items))
    }

    fn deliver_to(
        &self,
        delivery: Delivery,
        items: Option<mpsc::Sender<Bytes>>,
    ) -> Result<oneshot::Receiver<Reply>, BackendError> {
        let (reply, ended) = oneshot::channel();
        {
            let mut state = self.lock();
            if state.closed {
                return Err(BackendError::Crashed("the instance has stopped".to_owned()));
            }
            state.items = items.map(|items| (delivery.call_id.clone(), items));
            state.queued = Some((delivery, reply));
        }
        self.wake.notify_one();
        Ok(ended)
    }

    /// Resolves once the instance asked for its first call, or with the
    /// init error it reported.
    pub(crate) async fn ready(&self) -> Result<(), BackendError> {
        let mut readiness = self.readiness.subscribe();
        let seen = readiness
            .wait_for(|r| !matches!(r, Readiness::Starting))
            .await
            .map(|r| r.clone());
        match seen {
            Ok(Readiness::InitFailed(e)) => Err(e),
            Ok(_) => Ok(()),
            Err(_) => Err(BackendError::Unreachable("the instance stopped".to_owned())),
        }
    }

    /// The instance has stopped: its running or queued call ends with a
    /// crash, and it takes no more.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queued = None;
        state.running = None;
        state.items = None;
        state.streaming_in = false;
        drop(state);
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MailState> {
        self.state
            .lock()
            .expect("no code panics holding the mailbox's lock")
    }

    /// `GET invocation/next`: waits for the next call and hands it over.
    async fn next(&self) -> Response<Full<Bytes>> {
        self.readiness.send_if_modified(|r| {
            let starting = matches!(r, Readiness::Starting);
            if starting {
                *r = Readiness::Ready;
            }
            starting
        });
        loop {
            let woken = self.wake.notified();
            {
                let mut state = self.lock();
                // Else its running call's response is still being streamed
                // in: its end wakes this.
                if !state.streaming_in {
                    if let Some((id, reply)) = state.running.take() {
                        tracing::warn!(call_id = %id, "an instance asked for its next call without answering its last");
                        let _ = reply.send(Err(BackendError::Garbage(
                            "the instance asked for its next call without answering this one"
                                .to_owned(),
                        )));
                    }
                    if let Some((delivery, reply)) = state.queued.take() {
                        if !reply.is_closed() {
                            let response = event(&delivery);
                            state.running = Some((delivery.call_id, reply));
                            return response;
                        }
                    }
                }
            }
            woken.await;
        }
    }

    /// Ends the running call `id` with `reply`; false when no call of that
    /// id runs on this instance (unknown, finished, or another's).
    fn end(&self, id: &str, reply: Reply) -> bool {
        let mut state = self.lock();
        match state.running.take() {
            Some((running, sender)) if running == id => {
                let _ = sender.send(reply);
                if std::mem::take(&mut state.streaming_in) {
                    drop(state);
                    // A `next` may wait for this end.
                    self.wake.notify_one();
                }
                true
            }
            other => {
                state.running = other;
                false
            }
        }
    }

    /// The running call `id`'s response is being streamed in, until it ends.
    fn streaming_in(&self, id: &str) {
        let mut state = self.lock();
        if matches!(&state.running, Some((running, _)) if running == id) {
            state.streaming_in = true;
        }
    }

    /// The items channel of the running streaming call `id`, taken: only
    /// one post streams its items.
    fn take_items(&self, id: &str) -> Option<mpsc::Sender<Bytes>> {
        let mut state = self.lock();
        match state.items.take() {
            Some((call, items)) if call == id => Some(items),
            other => {
                state.items = other;
                None
            }
        }
    }

    fn is_running(&self, id: &str) -> bool {
        matches!(&self.lock().running, Some((running, _)) if running == id)
    }

    fn init_failed(&self, error: BackendError) -> bool {
        self.readiness.send_if_modified(|r| {
            let starting = matches!(r, Readiness::Starting);
            if starting {
                *r = Readiness::InitFailed(error);
            }
            starting
        })
    }
}

/// Serves the Runtime API for one instance on a new loopback port, until
/// the returned token is cancelled.
pub(crate) fn serve(
    identity: &LambdaIdentity,
) -> std::io::Result<(Arc<Mailbox>, SocketAddr, CancellationToken)> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let listener = TcpListener::from_std(listener)?;
    let mailbox = Arc::new(Mailbox {
        state: Mutex::new(MailState::default()),
        wake: Notify::new(),
        readiness: watch::Sender::new(Readiness::Starting),
        max_result: usize::try_from(identity.max_result).unwrap_or(usize::MAX),
    });
    let stop = CancellationToken::new();
    tokio::spawn(accept(listener, mailbox.clone(), stop.clone()));
    Ok((mailbox, addr, stop))
}

async fn accept(listener: TcpListener, mailbox: Arc<Mailbox>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "runtime API: cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let mailbox = mailbox.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let mailbox = mailbox.clone();
                async move { Ok::<_, Infallible>(handle(&mailbox, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .writev(false)
                // Runtime clients put a whole stack trace in one header of
                // an error report (`lambda-runtime-function-xray-error-cause`).
                .max_buf_size(MAX_REPORT * 4)
                // And as a streamed response's error trailers (base64).
                .max_header_size(MAX_REPORT * 4)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

async fn handle(mailbox: &Mailbox, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let Some(route) = path.strip_prefix(PREFIX) else {
        return refusal(StatusCode::NOT_FOUND, "UnknownRoute", "no such route");
    };
    match (request.method(), route) {
        (&Method::GET, "invocation/next") => mailbox.next().await,
        (&Method::POST, "init/error") => {
            let error = read_report(request).await;
            let (kind, message) = match error {
                Ok(report) => report,
                Err(response) => return response,
            };
            if mailbox.init_failed(super::init_failure(kind, message)) {
                accepted()
            } else {
                refusal(
                    StatusCode::FORBIDDEN,
                    "InvalidStateTransition",
                    "init/error is for the set-up, before the first invocation/next",
                )
            }
        }
        (&Method::POST, call) => match call
            .strip_prefix("invocation/")
            .and_then(|rest| rest.rsplit_once('/'))
        {
            Some((id, "response")) => respond(mailbox, id, request).await,
            Some((id, "error")) => report_error(mailbox, id, request).await,
            _ => refusal(StatusCode::NOT_FOUND, "UnknownRoute", "no such route"),
        },
        _ => refusal(StatusCode::NOT_FOUND, "UnknownRoute", "no such route"),
    }
}

/// `POST invocation/{id}/response`: the call's result.
async fn respond(mailbox: &Mailbox, id: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if !mailbox.is_running(id) {
        return unknown_call(id);
    }
    let streamed = request
        .headers()
        .get("lambda-runtime-function-response-mode")
        .is_some_and(|mode| mode.as_bytes().eq_ignore_ascii_case(b"streaming"));
    if streamed || mailbox.lock().items.is_some() {
        return stream::respond(mailbox, id, request, streamed).await;
    }
    let body = match Limited::new(request.into_body(), mailbox.max_result)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let why = if too_large {
                "the result is larger than the gateway's max_result".to_owned()
            } else {
                format!("reading the result: {e}")
            };
            mailbox.end(id, Err(BackendError::Garbage(why.clone())));
            let status = if too_large {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            return refusal(status, "InvalidResponse", &why);
        }
    };
    if mailbox.end(id, result_json(body)) {
        accepted()
    } else {
        unknown_call(id)
    }
}

/// `POST invocation/{id}/error`: the function failed.
async fn report_error(
    mailbox: &Mailbox,
    id: &str,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if !mailbox.is_running(id) {
        return unknown_call(id);
    }
    let (kind, message) = match read_report(request).await {
        Ok(report) => report,
        Err(response) => return response,
    };
    if mailbox.end(id, Err(BackendError::Function { kind, message })) {
        accepted()
    } else {
        unknown_call(id)
    }
}

/// An error report's type and message: `{"errorType", "errorMessage"}`,
/// the type from `Lambda-Runtime-Function-Error-Type` when the body has
/// none.
async fn read_report(
    request: Request<Incoming>,
) -> Result<(String, String), Response<Full<Bytes>>> {
    let header_kind = request
        .headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Limited::new(request.into_body(), MAX_REPORT)
        .collect()
        .await
        .map_err(|e| {
            refusal(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                &format!("reading the report: {e}"),
            )
        })?
        .to_bytes();
    Ok(error_report(&body, header_kind))
}

/// An error report's type and message, from `{"errorType", "errorMessage"}`
/// (`header_kind` when the body names no type; `Unhandled` when neither
/// does).
pub(crate) fn error_report(body: &[u8], header_kind: Option<String>) -> (String, String) {
    #[derive(serde::Deserialize, Default)]
    struct Report {
        #[serde(rename = "errorType")]
        kind: Option<String>,
        #[serde(rename = "errorMessage")]
        message: Option<String>,
    }
    let report: Report = serde_json::from_slice(body).unwrap_or_default();
    let kind = report
        .kind
        .filter(|k| !k.is_empty())
        .or(header_kind)
        .unwrap_or_else(|| "Unhandled".to_owned());
    (kind, report.message.unwrap_or_default())
}

/// The answer to `invocation/next`: the event, with its headers (also a
/// worker's `next`).
pub(crate) fn event(delivery: &Delivery) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(delivery.event.clone()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut set = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set("lambda-runtime-aws-request-id", &delivery.call_id);
    set(
        "lambda-runtime-deadline-ms",
        &delivery.deadline_ms.to_string(),
    );
    set("lambda-runtime-invoked-function-arn", &delivery.arn);
    set("lambda-runtime-trace-id", &delivery.trace_id);
    set("lambda-runtime-client-context", &delivery.client_context);
    response
}

fn accepted() -> Response<Full<Bytes>> {
    json(StatusCode::ACCEPTED, r#"{"status":"OK"}"#.to_owned())
}

fn unknown_call(id: &str) -> Response<Full<Bytes>> {
    refusal(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!("no call {id:?} is running on this instance"),
    )
}

fn refusal(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"errorType": kind, "errorMessage": message});
    json(status, body.to_string())
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
