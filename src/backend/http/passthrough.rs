//! Passthrough: a client's request forwarded to the function's HTTP
//! service unchanged (hop-by-hop and `X-Fngate-*` headers aside), streamed
//! both ways within the body limit, or stored for a spawned call and
//! replayed when it runs.

use super::*;

impl HttpBackend {
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
                    response
                        .extensions_mut()
                        .insert(crate::backend::StreamedAnswer);
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

pub(super) fn forward_uri(
    base: &Uri,
    suffix: &str,
    query: Option<&str>,
) -> Result<Uri, BackendError> {
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

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
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
