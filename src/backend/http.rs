//! The `http` backend: POSTs the invocation request to the function's URLs
//! through a pooled client (HTTP/1.1 or h2c, plain or TLS), round-robin;
//! or, for passthrough functions, forwards the client's request unchanged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::pool::{Lease, PoolError, Replica};
use super::{Backend, BackendError, BoxFuture, reported_error, result_json};
use crate::invocation::{Invocation, Principal, Trace, names};

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
}

impl HttpClients {
    pub fn new() -> HttpClients {
        HttpClients {
            negotiated: pool(false),
            h2c: pool(true),
        }
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
        let body = Bytes::from(invocation.to_json());
        let mut last_error = None;
        for index in self.rotation() {
            let url = &self.urls[index];
            let sent = match &self.replicas[index] {
                Some(replica) => send_pooled(replica, invocation, body.clone()).await,
                None => self.send_shared(url, invocation, body.clone()).await,
            };
            let (response, lease) = match sent {
                Ok(answer) => answer,
                Err(SendError::Connect(e)) => {
                    tracing::warn!(url = %url, error = %e, "backend replica unreachable; trying the next");
                    last_error = Some(e);
                    continue;
                }
                Err(SendError::Failed(e)) => {
                    return Err(BackendError::Crashed(format!("{url}: {e}")));
                }
            };
            let answer = self.read_answer(response).await;
            // The answer was read to its end (or its connection closes):
            // the connection may serve the next call.
            drop(lease);
            return answer;
        }
        Err(BackendError::Unreachable(format!(
            "no replica reachable: {}",
            last_error.unwrap_or_default()
        )))
    }

    /// Sends an invocation request through the shared hyper-util client
    /// (`https://` and h2c replicas).
    async fn send_shared(
        &self,
        url: &Uri,
        invocation: &Invocation,
        body: Bytes,
    ) -> Result<(Response<hyper::body::Incoming>, Option<Lease>), SendError> {
        let mut request = Request::post(url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .map_err(|e| SendError::Failed(format!("building the request: {e}")))?;
        add_call_headers(request.headers_mut(), invocation);
        match self.client.request(request).await {
            Ok(response) => Ok((response, None)),
            // Nothing reached this replica: the next one may take it.
            Err(e) if e.is_connect() => Err(SendError::Connect(error_chain(&e))),
            Err(e) => Err(SendError::Failed(error_chain(&e))),
        }
    }

    async fn read_answer(
        &self,
        response: Response<hyper::body::Incoming>,
    ) -> Result<Bytes, BackendError> {
        let status = response.status();
        let limit = usize::try_from(self.max_result).unwrap_or(usize::MAX);
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| BackendError::Crashed(format!("reading the answer: {e}")))?
            .to_bytes();
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

    /// Forwards a passthrough request: `suffix` is the path after
    /// `/{app}/{function}`, appended to the replica URL's path. The answer
    /// comes back as the backend gave it, streamed. The body is sent as it
    /// arrives, never more than `body_limit` bytes of it: past that the
    /// request is abandoned (the backend sees it cut short) and the caller
    /// learns why, as it does when reading the body fails.
    pub async fn forward(
        &self,
        mut request: Request<Body>,
        suffix: &str,
        trace: &Trace,
        principal: Option<&Principal>,
        deadline: tokio::time::Instant,
        body_limit: u64,
    ) -> Result<Response<Body>, ForwardError> {
        strip_hop_by_hop(request.headers_mut());
        strip_gateway_headers(request.headers_mut());
        request.headers_mut().remove(header::HOST);
        set_trace_headers(request.headers_mut(), trace);
        set_principal_headers(request.headers_mut(), principal);
        let query = request.uri().query().map(str::to_owned);
        // A body can be sent only once, so only bodiless requests move on
        // to another replica when one cannot be reached.
        let replayable = request.method() == Method::GET || request.method() == Method::HEAD;
        let (parts, body) = request.into_parts();
        let fault = Arc::new(Mutex::new(None));
        let mut body = Some(Body::new(ClientBody {
            inner: body,
            remaining: body_limit,
            fault: fault.clone(),
        }));
        let mut last_error = None;
        for index in self.rotation() {
            let url = &self.urls[index];
            let target = forward_uri(url, suffix, query.as_deref())?;
            let mut outgoing =
                Request::from_parts(parts.clone(), body.take().unwrap_or_else(Body::empty));
            *outgoing.uri_mut() = target;
            *outgoing.version_mut() = http::Version::HTTP_11;
            let sent = tokio::time::timeout_at(deadline, self.client.request(outgoing)).await;
            match sent {
                Err(_) => return Err(BackendError::Timeout.into()),
                Ok(Ok(response)) => {
                    let mut response = response.map(Body::new);
                    strip_hop_by_hop(response.headers_mut());
                    return Ok(response);
                }
                Ok(Err(e)) => {
                    // The client's body failed, not the backend: say how.
                    let body_fault = fault.lock().unwrap_or_else(PoisonError::into_inner).take();
                    if let Some(body_fault) = body_fault {
                        return Err(body_fault);
                    }
                    if e.is_connect() && replayable {
                        tracing::warn!(url = %url, error = %e, "backend replica unreachable; trying the next");
                        last_error = Some(e);
                        continue;
                    }
                    let error = if e.is_connect() {
                        BackendError::Unreachable(format!("{url}: {}", error_chain(&e)))
                    } else {
                        BackendError::Crashed(format!("{url}: {}", error_chain(&e)))
                    };
                    return Err(error.into());
                }
            }
        }
        let detail = last_error.map(|e| error_chain(&e)).unwrap_or_default();
        Err(BackendError::Unreachable(format!("no replica reachable: {detail}")).into())
    }
}

/// Why a passthrough request got no answer from its backend.
#[derive(Debug)]
pub enum ForwardError {
    Backend(BackendError),
    /// The client's body passed the limit; the backend got no more of it
    /// than the limit.
    BodyTooLarge,
    /// Reading the client's body failed (it stalled, or its connection
    /// broke), with the body's own error.
    Body(axum::Error),
}

impl From<BackendError> for ForwardError {
    fn from(error: BackendError) -> ForwardError {
        ForwardError::Backend(error)
    }
}

/// A client's request body on its way to a backend: it ends in an error
/// before the frame that would pass `remaining` bytes, and keeps what went
/// wrong for `forward`, since hyper reports only that the body failed
/// (and over HTTP/2 not even that).
struct ClientBody {
    inner: Body,
    remaining: u64,
    fault: Arc<Mutex<Option<ForwardError>>>,
}

/// The error a [`ClientBody`] gives hyper; the cause is in its fault.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
struct ClientBodyFailed;

impl http_body::Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyFailed;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, ClientBodyFailed>>> {
        use std::task::Poll;
        let this = &mut *self;
        let fault = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => ForwardError::Body(e),
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, |data| data.len() as u64);
                match this.remaining.checked_sub(size) {
                    Some(left) => {
                        this.remaining = left;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    None => ForwardError::BodyTooLarge,
                }
            }
        };
        *this.fault.lock().unwrap_or_else(PoisonError::into_inner) = Some(fault);
        Poll::Ready(Some(Err(ClientBodyFailed)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Sends an invocation request on one of the replica's keep-alive
/// connections.
async fn send_pooled(
    replica: &Replica,
    invocation: &Invocation,
    body: Bytes,
) -> Result<(Response<hyper::body::Incoming>, Option<Lease>), SendError> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    request
        .headers_mut()
        .insert(header::CONTENT_TYPE, APPLICATION_JSON);
    add_call_headers(request.headers_mut(), invocation);
    match replica.send(request).await {
        Ok((response, lease)) => Ok((response, Some(lease))),
        Err(e @ PoolError::Connect { .. }) => Err(SendError::Connect(e.to_string())),
        Err(PoolError::Request(e)) => Err(SendError::Failed(error_chain(&e))),
    }
}

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A passthrough request kept in the store until it runs: what `forward`
/// needs to send it, minus hop-by-hop, `X-Fngate-*` and `Prefer` headers
/// (the last was addressed to the gateway).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct StoredRequest {
    method: String,
    suffix: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    /// The body, base64.
    body: String,
}

/// A passthrough answer read whole, to be stored.
#[derive(Debug)]
pub struct StoredAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl StoredRequest {
    pub fn new(parts: &http::request::Parts, suffix: &str, body: &[u8]) -> StoredRequest {
        use base64::Engine;
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        strip_gateway_headers(&mut headers);
        headers.remove(header::HOST);
        headers.remove("prefer");
        StoredRequest {
            method: parts.method.to_string(),
            suffix: suffix.to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: headers
                .iter()
                .filter_map(|(name, value)| {
                    Some((name.to_string(), value.to_str().ok()?.to_owned()))
                })
                .collect(),
            body: base64::engine::general_purpose::STANDARD.encode(body),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a stored request always serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<StoredRequest, BackendError> {
        serde_json::from_slice(bytes)
            .map_err(|e| BackendError::Garbage(format!("stored request unreadable: {e}")))
    }

    fn request(&self) -> Result<Request<Body>, BackendError> {
        use base64::Engine;
        let bad = |e: &dyn std::fmt::Display| {
            BackendError::Garbage(format!("stored request unusable: {e}"))
        };
        let body = base64::engine::general_purpose::STANDARD
            .decode(&self.body)
            .map_err(|e| bad(&e))?;
        let path = match &self.query {
            Some(query) => format!("/?{query}"),
            None => "/".to_owned(),
        };
        let mut request = Request::builder()
            .method(self.method.as_str())
            .uri(path)
            .body(Body::from(body))
            .map_err(|e| bad(&e))?;
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                request.headers_mut().append(name, value);
            }
        }
        Ok(request)
    }
}

impl HttpBackend {
    /// Sends a stored passthrough request and reads the whole answer.
    pub async fn replay(
        &self,
        stored: &StoredRequest,
        trace: &Trace,
        principal: Option<&Principal>,
        deadline: tokio::time::Instant,
    ) -> Result<StoredAnswer, BackendError> {
        let forwarded = self.forward(
            stored.request()?,
            &stored.suffix,
            trace,
            principal,
            deadline,
            u64::MAX,
        );
        let response = match forwarded.await {
            Ok(response) => response,
            Err(ForwardError::Backend(e)) => return Err(e),
            // A stored body is whole and was checked against the limit
            // when the call was spawned.
            Err(ForwardError::BodyTooLarge | ForwardError::Body(_)) => {
                return Err(BackendError::Garbage(
                    "the stored request's body could not be sent".to_owned(),
                ));
            }
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limit = usize::try_from(self.max_result).unwrap_or(usize::MAX);
        let read = Limited::new(response.into_body(), limit).collect();
        let body = match tokio::time::timeout_at(deadline, read).await {
            Err(_) => return Err(BackendError::Timeout),
            Ok(Err(e)) => return Err(BackendError::Crashed(format!("reading the answer: {e}"))),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        Ok(StoredAnswer {
            status,
            content_type,
            body,
        })
    }
}

fn forward_uri(base: &Uri, suffix: &str, query: Option<&str>) -> Result<Uri, BackendError> {
    let base_path = base.path().trim_end_matches('/');
    let mut path_and_query = format!("{base_path}{suffix}");
    if path_and_query.is_empty() {
        path_and_query.push('/');
    }
    if let Some(query) = query {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|e| BackendError::Unreachable(format!("building the forwarded URL: {e}")))?,
    );
    Uri::from_parts(parts)
        .map_err(|e| BackendError::Unreachable(format!("building the forwarded URL: {e}")))
}

/// Headers that describe one connection, not the message (RFC 9110 7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
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

fn set_trace_headers(headers: &mut HeaderMap, trace: &Trace) {
    if let Ok(value) = HeaderValue::from_str(&trace.request_id) {
        headers.insert(names::X_REQUEST_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&trace.traceparent) {
        headers.insert(names::TRACEPARENT, value);
    }
}

fn add_call_headers(headers: &mut HeaderMap, invocation: &Invocation) {
    set_trace_headers(headers, &invocation.trace);
    if let Ok(value) = HeaderValue::from_str(invocation.call_id.as_str()) {
        headers.insert(names::X_FNGATE_CALL_ID, value);
    }
    set_principal_headers(headers, invocation.principal.as_ref());
}

/// `X-Fngate-Subject` and `X-Fngate-Issuer` for an authenticated call.
fn set_principal_headers(headers: &mut HeaderMap, principal: Option<&Principal>) {
    let Some(principal) = principal else {
        return;
    };
    if let Ok(value) = HeaderValue::from_str(&principal.subject) {
        headers.insert(names::X_FNGATE_SUBJECT, value);
    }
    if let Some(Ok(value)) = principal.issuer.as_deref().map(HeaderValue::from_str) {
        headers.insert(names::X_FNGATE_ISSUER, value);
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
}
