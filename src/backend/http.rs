//! The `http` backend: POSTs the invocation request to the function's URLs
//! through a pooled client (HTTP/1.1 or h2c, plain or TLS), round-robin;
//! or, for passthrough functions, forwards the client's request unchanged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::pool::{self, HeaderSink, PoolError, Replica};
use super::stream::{self, Decoding, Framing, ItemSource, ItemStream, Step};
use super::{Backend, BackendError, BoxFuture, reported_error, result_json};

mod passthrough;

use crate::invocation::{Invocation, Principal, Trace, names};
pub use passthrough::{ForwardError, StoredAnswer, StoredRequest};
#[cfg(test)]
use passthrough::{forward_uri, strip_hop_by_hop};

/// A pooled client that speaks HTTP/1.1, or h2 where TLS offers it.
pub type Pool = Client<HttpsConnector<HttpConnector>, Body>;

/// How much of a failed answer's body becomes the error message.
const ERROR_BODY_LIMIT: usize = 4096;

/// The connection pools every http backend shares: one speaking HTTP/1.1
/// (or h2 where TLS offers it), one speaking h2c with prior knowledge.
#[derive(Clone)]
pub struct HttpClients {
    negotiated: Pool,
    h2c: Pool,
    /// The gateway's own URL, sent with every invocation request as
    /// `X-Fngate-Url` (functions call other functions there).
    gateway_url: Option<HeaderValue>,
}

impl HttpClients {
    pub fn new() -> HttpClients {
        HttpClients {
            negotiated: pool(false),
            h2c: pool(true),
            gateway_url: None,
        }
    }

    /// Tells every backend built from these clients the gateway's own URL.
    pub fn set_gateway_url(&mut self, url: &str) {
        self.gateway_url = HeaderValue::from_str(url).ok();
    }
}

impl HttpClients {
    /// The HTTP/1.1-or-negotiated pool, for the gateway's own requests
    /// (webhook deliveries). It never follows redirects.
    pub fn client(&self) -> Pool {
        self.negotiated.clone()
    }
}

impl Default for HttpClients {
    fn default() -> Self {
        HttpClients::new()
    }
}

fn pool(http2_only: bool) -> Pool {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(5)));
    let tls = tls_client_config();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .http2_only(http2_only)
        .build(connector)
}

/// TLS to backends trusts the system's roots.
fn tls_client_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the aws-lc-rs provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

pub struct HttpBackend {
    client: Pool,
    urls: Vec<Uri>,
    /// For each URL, its keep-alive connections when it is a plain
    /// `http://` replica spoken to in HTTP/1.1 (the invocation fast path).
    replicas: Vec<Option<Replica>>,
    next: AtomicUsize,
    max_result: u64,
    /// `X-Fngate-Url` for every invocation request.
    gateway_url: Option<HeaderValue>,
}

/// Why one replica gave no answer.
enum SendError {
    /// Nothing reached it: the next replica may take the call.
    Connect(String),
    Failed(String),
}

impl HttpBackend {
    pub fn new(clients: &HttpClients, urls: Vec<Uri>, http2: bool, max_result: u64) -> HttpBackend {
        assert!(
            !urls.is_empty(),
            "config validation guarantees at least one url"
        );
        let replicas = urls
            .iter()
            .map(|url| if http2 { None } else { Replica::for_url(url) })
            .collect();
        HttpBackend {
            client: if http2 {
                clients.h2c.clone()
            } else {
                clients.negotiated.clone()
            },
            replicas,
            urls,
            next: AtomicUsize::new(0),
            max_result,
            gateway_url: clients.gateway_url.clone(),
        }
    }

    /// The replicas (their index) in the order this call tries them.
    fn rotation(&self) -> impl Iterator<Item = usize> + use<> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.urls.len();
        (0..count).map(move |i| (start + i) % count)
    }

    /// Runs `invocation` on the first replica that can be reached, within
    /// its deadline (one timer for the whole call).
    async fn run(&self, invocation: &Invocation) -> Result<Bytes, BackendError> {
        tokio::time::timeout_at(invocation.deadline, self.try_replicas(invocation))
            .await
            .unwrap_or(Err(BackendError::Timeout))
    }

    async fn try_replicas(&self, invocation: &Invocation) -> Result<Bytes, BackendError> {
        let response = self.send(invocation).await?;
        read_answer(response, self.max_result).await
    }

    /// Sends `invocation` to the first replica that can be reached: the
    /// head of its answer (its body is read from the connection as it is
    /// polled; read to its end, the connection may serve the next call).
    async fn send(&self, invocation: &Invocation) -> Result<Response<AnswerBody>, BackendError> {
        let body = Bytes::from(invocation.to_json());
        let mut last_error = None;
        for index in self.rotation() {
            let url = &self.urls[index];
            let sent = match &self.replicas[index] {
                Some(replica) => {
                    send_pooled(replica, invocation, body.clone(), self.gateway_url.as_ref()).await
                }
                None => self.send_shared(url, invocation, body.clone()).await,
            };
            match sent {
                Ok(answer) => return Ok(answer),
                Err(SendError::Connect(e)) => {
                    tracing::warn!(url = %url, error = %e, "backend replica unreachable; trying the next");
                    last_error = Some(e);
                }
                Err(SendError::Failed(e)) => {
                    return Err(BackendError::Crashed(format!("{url}: {e}")));
                }
            }
        }
        Err(BackendError::Unreachable(format!(
            "no replica reachable: {}",
            last_error.unwrap_or_default()
        )))
    }

    /// Starts a streaming call: a 2xx `application/x-ndjson` or
    /// `text/event-stream` answer is read item by item as it arrives (see
    /// [`stream_answer`]). The request is dropped with the stream.
    pub(crate) async fn open_stream(
        &self,
        invocation: &Invocation,
    ) -> Result<ItemStream, BackendError> {
        let response = self.send(invocation).await?;
        stream_answer(response, (), self.max_result).await
    }

    /// Sends an invocation request through the shared hyper-util client
    /// (`https://` and h2c replicas).
    async fn send_shared(
        &self,
        url: &Uri,
        invocation: &Invocation,
        body: Bytes,
    ) -> Result<Response<AnswerBody>, SendError> {
        let mut request = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .map_err(|e| SendError::Failed(format!("building the request: {e}")))?;
        add_call_headers(request.headers_mut(), invocation, self.gateway_url.as_ref());
        match self.client.request(request).await {
            Ok(response) => Ok(response.map(AnswerBody::Hyper)),
            // Nothing reached this replica: the next one may take it.
            Err(e) if e.is_connect() => Err(SendError::Connect(error_chain(&e))),
            Err(e) => Err(SendError::Failed(error_chain(&e))),
        }
    }
}

/// Reads a function's HTTP answer, at most `max_result` bytes of it, as an
/// invocation's outcome (`result_of`). Warm HTTP instances are read the same
/// way, by the gateway and by `fngate worker`.
pub(crate) async fn read_answer<B>(
    response: Response<B>,
    max_result: u64,
) -> Result<Bytes, BackendError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let status = response.status();
    let limit = usize::try_from(max_result).unwrap_or(usize::MAX);
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| BackendError::Crashed(format!("reading the answer: {e}")))?
        .to_bytes();
    result_of(status, body)
}

/// A function's HTTP answer as items: a 2xx `application/x-ndjson` or
/// `text/event-stream` body item by item as its chunks arrive; any other
/// answer is read whole as [`read_answer`] reads it (a 2xx JSON body is
/// one item). `keep` (the connection, an instance's lease) lives as long
/// as the stream.
pub(crate) async fn stream_answer<B, K>(
    response: Response<B>,
    keep: K,
    max_result: u64,
) -> Result<ItemStream, BackendError>
where
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    K: Send + 'static,
{
    let framing = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| response.status().is_success())
        .and_then(Framing::of_content_type);
    let Some(framing) = framing else {
        let answer = read_answer(response, max_result).await;
        drop(keep);
        return answer.map(stream::single);
    };
    let items = BodyItems {
        body: response.into_body(),
        decoding: Decoding::new(framing, max_result),
        _keep: keep,
    };
    Ok(stream::from_source(items))
}

/// A streaming answer's body, cut into items as its chunks arrive.
struct BodyItems<B, K> {
    body: B,
    decoding: Decoding,
    _keep: K,
}

impl<B, K> ItemSource for BodyItems<B, K>
where
    B: HttpBody<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
    K: Send + 'static,
{
    async fn next(&mut self) -> Option<Result<Bytes, BackendError>> {
        loop {
            match self.decoding.step() {
                Step::Item(item) => return Some(item),
                Step::End | Step::Done => return None,
                Step::Read => {}
            }
            match self.body.frame().await {
                None => self.decoding.end_of_input(),
                Some(Ok(frame)) => {
                    // Trailers say nothing here.
                    if let Ok(data) = frame.into_data() {
                        self.decoding.push(&data);
                    }
                }
                Some(Err(e)) => {
                    self.decoding.stop();
                    let e: BoxError = e.into();
                    let why = format!("reading the answer: {}", error_chain(&*e));
                    return Some(Err(BackendError::Crashed(why)));
                }
            }
        }
    }
}

/// A function's HTTP answer as an invocation's outcome: a 2xx JSON body is
/// the result; otherwise `{"error": {"type", "message"}}` is the function's
/// error as it said, and any other body (its first bytes) the message of an
/// `HTTP <status>` error.
fn result_of(status: StatusCode, body: Bytes) -> Result<Bytes, BackendError> {
    if status.is_success() {
        return result_json(body);
    }
    if let Some(reported) = reported_error(&body) {
        return Err(reported);
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_LIMIT)])
        .trim()
        .to_owned();
    Err(BackendError::Function {
        kind: format!("HTTP {}", status.as_u16()),
        message: if text.is_empty() {
            status.to_string()
        } else {
            text
        },
    })
}

/// Sends an invocation request on one of the replica's keep-alive
/// connections.
async fn send_pooled(
    replica: &Replica,
    invocation: &Invocation,
    body: Bytes,
    gateway_url: Option<&HeaderValue>,
) -> Result<Response<AnswerBody>, SendError> {
    let mut head = replica.head(body.len());
    head.set(&header::CONTENT_TYPE, "application/json", false);
    add_call_headers(&mut head, invocation, gateway_url);
    match replica.post(head, body).await {
        Ok(response) => Ok(response.map(AnswerBody::Pooled)),
        Err(e @ PoolError::Connect { .. }) => Err(SendError::Connect(e.to_string())),
        Err(PoolError::Request(e)) => Err(SendError::Failed(e)),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An answer's body: read by fngate's own pooled client (plain
/// `http://` replicas) or by hyper's.
pub(crate) enum AnswerBody {
    Pooled(pool::Answer),
    Hyper(hyper::body::Incoming),
}

impl HttpBody for AnswerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            AnswerBody::Pooled(answer) => std::pin::Pin::new(answer)
                .poll_frame(cx)
                .map_err(Into::into),
            AnswerBody::Hyper(incoming) => std::pin::Pin::new(incoming)
                .poll_frame(cx)
                .map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AnswerBody::Pooled(answer) => answer.is_end_stream(),
            AnswerBody::Hyper(incoming) => incoming.is_end_stream(),
        }
    }
}

/// Drops every `X-Fngate-*` header: only the gateway sets those.
pub fn strip_gateway_headers(headers: &mut HeaderMap) {
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-fngate-"))
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

fn set_trace_headers(headers: &mut impl HeaderSink, trace: &Trace) {
    headers.set(&names::X_REQUEST_ID, &trace.request_id, false);
    headers.set(&names::TRACEPARENT, &trace.traceparent, false);
}

fn add_call_headers(
    headers: &mut impl HeaderSink,
    invocation: &Invocation,
    gateway_url: Option<&HeaderValue>,
) {
    set_trace_headers(headers, &invocation.trace);
    headers.set(&names::X_FNGATE_CALL_ID, invocation.call_id.as_str(), false);
    set_principal_headers(headers, invocation.principal.as_ref());
    // A function calls other functions at this URL with this token.
    if let Some(token) = invocation.call_token.as_deref() {
        headers.set(&X_FNGATE_CALL_TOKEN, token, true);
    }
    if let Some(url) = gateway_url.and_then(|url| url.to_str().ok()) {
        headers.set(&X_FNGATE_URL, url, false);
    }
}

const X_FNGATE_CALL_TOKEN: HeaderName = HeaderName::from_static("x-fngate-call-token");
const X_FNGATE_URL: HeaderName = HeaderName::from_static("x-fngate-url");

/// `X-Fngate-Subject` and `X-Fngate-Issuer` for an authenticated call.
fn set_principal_headers(headers: &mut impl HeaderSink, principal: Option<&Principal>) {
    let Some(principal) = principal else {
        return;
    };
    headers.set(&names::X_FNGATE_SUBJECT, &principal.subject, false);
    if let Some(issuer) = principal.issuer.as_deref() {
        headers.set(&names::X_FNGATE_ISSUER, issuer, false);
    }
}

/// An error and its causes on one line, for the log.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Backend for HttpBackend {
    fn invoke<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        Box::pin(self.run(invocation))
    }

    fn invoke_stream<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<ItemStream, BackendError>> {
        Box::pin(self.open_stream(invocation))
    }

    fn describe(&self) -> String {
        let urls: Vec<String> = self.urls.iter().map(Uri::to_string).collect();
        format!("http {}", urls.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_uri_appends_suffix_and_query() {
        let base: Uri = "http://127.0.0.1:9001/api/".parse().unwrap();
        assert_eq!(
            forward_uri(&base, "/x/y", Some("a=1")).unwrap(),
            "http://127.0.0.1:9001/api/x/y?a=1"
        );
        assert_eq!(
            forward_uri(&base, "", None).unwrap(),
            "http://127.0.0.1:9001/api"
        );
        let root: Uri = "http://127.0.0.1:9001".parse().unwrap();
        assert_eq!(
            forward_uri(&root, "", None).unwrap(),
            "http://127.0.0.1:9001/"
        );
    }

    #[test]
    fn hop_by_hop_and_gateway_headers_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("close, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("x-fngate-subject", HeaderValue::from_static("mallory"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut headers);
        strip_gateway_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-kept"], "yes");
    }

    fn answered(status: u16, body: &'static str) -> Result<Bytes, BackendError> {
        result_of(StatusCode::from_u16(status).unwrap(), Bytes::from(body))
    }

    #[test]
    fn a_2xx_json_answer_is_the_result_and_garbage_is_not() {
        assert_eq!(answered(200, " 1764\n").unwrap(), "1764");
        assert_eq!(answered(201, "").unwrap(), "null");
        assert!(matches!(
            answered(200, "<html>"),
            Err(BackendError::Garbage(_))
        ));
    }

    #[test]
    fn a_reported_error_keeps_its_type_and_other_answers_name_their_status() {
        match answered(
            500,
            r#"{"error": {"type": "TypeError", "message": "x must be a number"}}"#,
        ) {
            Err(BackendError::Function { kind, message }) => {
                assert_eq!(kind, "TypeError");
                assert_eq!(message, "x must be a number");
            }
            other => panic!("{other:?}"),
        }
        match answered(503, "  busy  ") {
            Err(BackendError::Function { kind, message }) => {
                assert_eq!(kind, "HTTP 503");
                assert_eq!(message, "busy");
            }
            other => panic!("{other:?}"),
        }
        match answered(404, "") {
            Err(BackendError::Function { message, .. }) => assert_eq!(message, "404 Not Found"),
            other => panic!("{other:?}"),
        }
    }
}
