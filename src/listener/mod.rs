//! Listeners: the accept loop, TLS handshakes (each in its own task, with
//! a timeout), HTTP/1.1 or HTTP/2 by ALPN through hyper-util's auto
//! builder, the connection cap, idle, slow-header and slow-body timeouts,
//! what is left of request bodies, result bytes held per connection, and
//! draining on shutdown.

mod activity;
mod body;
mod framing;
pub(crate) mod h1;
mod held;
mod until_expired;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::{Http1Engine, ServerConfig};
use crate::http::problem::ApiError;
use crate::http::{App, ClientCertificate, PeerAddr, PlainListener};
use crate::tls;

/// Who is on the other end of a connection.
#[derive(Clone)]
struct Peer {
    addr: SocketAddr,
    /// The principal of a verified client certificate (mTLS).
    client: Option<crate::invocation::Principal>,
    /// The connection came over the plain-HTTP listener.
    plain: bool,
}
use activity::{Activity, RequestGuard, Tracked};
use body::{BodyPace, BodyReturn, Leftover, RequestBody};
use held::ResultBudget;
use until_expired::{UntilExpired, expiry};

/// Connection-level limits shared by every listener.
pub struct ConnectionLimits {
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub h2_max_streams: u32,
    pub h2_max_pending_resets: u32,
    pub shutdown_grace: Duration,
    /// How slowly a request body may come.
    pub body_pace: BodyPace,
    /// Answer bytes that connections may hold unsent.
    pub results: Arc<ResultBudget>,
    /// Open connections across all listeners.
    pub slots: Arc<Semaphore>,
    /// What serves HTTP/1.1 over TLS.
    pub http1_engine: Http1Engine,
}

/// The HTTP/1.1 settings, on hyper's builder or on hyper-util's auto
/// builder (two types with the same methods).
macro_rules! http1_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            // Header-read and idle timeouts are kept by `Activity`: hyper's
            // own header timer also runs while a connection idles.
            .header_read_timeout(None)
            // hyper's own limit is a backstop (a bare 431); the configured
            // limit is checked per request, answered as a problem.
            .max_buf_size(hyper_header_cap($limits.max_header_bytes))
    };
}

/// The HTTP/2 settings, on either builder.
macro_rules! http2_settings {
    ($builder:expr, $limits:expr) => {
        $builder
            .timer(TokioTimer::new())
            .max_concurrent_streams($limits.h2_max_streams)
            // Rapid reset (CVE-2023-44487): a client that opens and resets
            // streams faster than they can be served is cut off.
            .max_pending_accept_reset_streams($limits.h2_max_pending_resets as usize)
            .max_local_error_reset_streams(256)
            .max_header_list_size(
                u32::try_from(hyper_header_cap($limits.max_header_bytes)).unwrap_or(u32::MAX),
            )
    };
}
impl ConnectionLimits {
    pub fn from_config(server: &ServerConfig) -> ConnectionLimits {
        ConnectionLimits {
            handshake_timeout: server.handshake_timeout,
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_header_bytes: server.max_header_bytes,
            h2_max_streams: server.h2_max_streams,
            h2_max_pending_resets: server.h2_max_pending_resets,
            shutdown_grace: server.shutdown_grace,
            body_pace: BodyPace {
                gap: server.body_read_timeout,
                min_rate: server.body_min_rate,
            },
            results: Arc::new(ResultBudget::new(
                server.result_buffer_per_connection,
                server.result_buffer_total,
            )),
            slots: Arc::new(Semaphore::new(server.max_connections)),
            http1_engine: server.http1_engine,
        }
    }

    fn builders(&self) -> Builders {
        let mut auto = auto::Builder::new(TokioExecutor::new());
        http1_settings!(auto.http1(), self);
        http2_settings!(auto.http2(), self);
        let mut http1 = http1::Builder::new();
        http1_settings!(http1, self);
        let mut http2 = http2::Builder::new(LocalExec);
        http2_settings!(http2, self);
        Builders {
            auto,
            http1,
            http2,
            http1_engine: self.http1_engine,
        }
    }
}

/// How connections are served: by ALPN over TLS (HTTP/1.1 or HTTP/2, no
/// sniffing), or by looking at the first bytes on plain HTTP (HTTP/1.1 or
/// h2c with prior knowledge).
struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1: http1::Builder,
    http2: http2::Builder<LocalExec>,
    http1_engine: Http1Engine,
}

/// Runs an HTTP/2 connection's stream tasks on the worker's `LocalSet`,
/// beside the connection's own task: no lock to spawn, no `Send` asked.
#[derive(Clone, Copy)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// The protocol of a connection, when known before its first byte.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
    Sniff,
}

/// The answer to a request whose body is framed ambiguously (both
/// `Content-Length` and `Transfer-Encoding`, several or unusual
/// `Transfer-Encoding` headers, a bad `Content-Length`, or bytes the
/// framing cannot be followed through): the shape of a request smuggling
/// attempt. Refused, and the connection is closed after it.
fn refuse_ambiguous_framing() -> http::Response<axum::body::Body> {
    let request_id = crate::invocation::random_hex::<16>();
    tracing::info!(status = 400, request_id = %request_id, "request with ambiguous framing refused");
    let error = ApiError::BadRequest(
        "the request's body is framed ambiguously (e.g. Content-Length and Transfer-Encoding together); refused".to_owned(),
    );
    let mut response = error.into_problem(&request_id);
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    if let Ok(value) = http::HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", value);
    }
    response
}

/// The header size hyper refuses on its own: well above the configured
/// limit, so that requests over it get the gateway's 431 problem instead.
fn hyper_header_cap(max_header_bytes: usize) -> usize {
    (max_header_bytes * 4).max(64 << 10)
}

/// Binds `addr` once and hands each of `count` workers its own handle on
/// the socket (the workers accept from one queue). No `SO_REUSEPORT`: a
/// second gateway on a taken address fails with "address in use" instead
/// of sharing the port, whoever started it. Call within a runtime.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Lets a restarted gateway bind while old connections sit in TIME_WAIT;
    // on Linux it never lets two listeners share a port.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(LISTEN_BACKLOG)?.into_std()?;
    let mut listeners = Vec::with_capacity(count.max(1));
    for _ in 1..count.max(1) {
        listeners.push(listener.try_clone()?);
    }
    listeners.insert(0, listener);
    Ok(listeners)
}

/// Connections the kernel queues before they are accepted (capped by
/// `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;

/// One worker: serves its HTTPS listeners (and its plain-HTTP one, when
/// configured) on the runtime it is polled on, until `shutdown`.
pub async fn worker(
    https: Vec<std::net::TcpListener>,
    http: Option<std::net::TcpListener>,
    tls: Arc<tls::LiveTls>,
    app: App,
    limits: Arc<ConnectionLimits>,
    shutdown: CancellationToken,
) {
    let plain = async {
        match http.map(TcpListener::from_std) {
            Some(Ok(listener)) => {
                serve(
                    listener,
                    None,
                    app.clone(),
                    limits.clone(),
                    shutdown.clone(),
                )
                .await;
            }
            Some(Err(e)) => tracing::error!(error = %e, "cannot serve the HTTP listener"),
            None => {}
        }
    };
    let secure = futures_util::future::join_all(https.into_iter().filter_map(|listener| {
        match TcpListener::from_std(listener) {
            Ok(listener) => Some(serve(
                listener,
                Some(tls.clone()),
                app.clone(),
                limits.clone(),
                shutdown.clone(),
            )),
            Err(e) => {
                tracing::error!(error = %e, "cannot serve an HTTPS listener");
                None
            }
        }
    }));
    tokio::join!(secure, plain);
}

/// Accepts connections on `listener` until `shutdown`, then drains: open
/// connections finish their in-flight requests within the grace period.
/// With `tls` absent the listener speaks plain HTTP (for use behind a TLS
/// load balancer).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<tls::LiveTls>>,
    app: App,
    limits: Arc<ConnectionLimits>,
    shutdown: CancellationToken,
) {
    let builders = Arc::new(limits.builders());
    let graceful = GracefulShutdown::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        // At the connection cap, new connections wait in the kernel's
        // queue until one closes (as nginx does), rather than being reset.
        let slot = match limits.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::debug!("connection limit reached; new connections wait");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    slot = limits.slots.clone().acquire_owned() => {
                        slot.expect("the connection semaphore is never closed")
                    }
                }
            }
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = Duration::from_millis(5);
                    accepted
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, never give up.
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let builders = builders.clone();
        let app = app.clone();
        let tls = tls.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        tokio::task::spawn_local(async move {
            let _slot = slot;
            // The task holds little more than the connection's box: what
            // serves it is built outside any `async` state, so that neither
            // the TLS stream nor the handshake's result stays in the task
            // beside the copy that the box holds.
            let served = match tls.map(|live| live.acceptor()) {
                Some(acceptor) => {
                    // Boxed: the handshake's state is freed once it is done,
                    // instead of staying in the connection's task.
                    let handshake = Box::pin(tokio::time::timeout(
                        limits.handshake_timeout,
                        acceptor.accept(stream),
                    ));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            crate::metrics::global().record_handshake();
                            let session = stream.get_ref().1;
                            let protocol = if session.alpn_protocol() == Some(b"h2") {
                                Protocol::Http2
                            } else {
                                Protocol::Http1
                            };
                            let client =
                                session.peer_certificates().and_then(tls::client_principal);
                            let who = Peer {
                                addr: peer,
                                client,
                                plain: false,
                            };
                            connection(
                                &builders, &limits, watcher, &shutdown, stream, app, who, protocol,
                            )
                        }
                        Ok(Err(e)) => {
                            crate::metrics::global().record_handshake_failure(false);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            crate::metrics::global().record_handshake_failure(true);
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    let who = Peer {
                        addr: peer,
                        client: None,
                        plain: true,
                    };
                    connection(
                        &builders,
                        &limits,
                        watcher,
                        &shutdown,
                        stream,
                        app,
                        who,
                        Protocol::Sniff,
                    )
                }
            };
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

/// A connection being served, boxed whole.
type Served = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// What serves one connection until it ends, idles past `idle_timeout`, or
/// (on HTTP/1) takes longer than `header_read_timeout` to send a request's
/// headers. Built in one box, the connection's future and its expiry side
/// by side: every `async` layer around a future keeps a copy of it (an
/// idle TLS connection held its 2,600-byte HTTP/1.1 loop three times over,
/// and the TLS stream twice).
#[allow(clippy::too_many_arguments)]
fn connection<IO>(
    builders: &Builders,
    limits: &ConnectionLimits,
    watcher: Watcher,
    shutdown: &CancellationToken,
    stream: IO,
    app: App,
    peer: Peer,
    protocol: Protocol,
) -> Served
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http1 = protocol != Protocol::Http2;
    let activity = Arc::new(Activity::new());
    let handler = Arc::new(Handler {
        app,
        peer,
        pace: limits.body_pace,
        results: limits.results.clone(),
        held: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        activity: activity.clone(),
        http1,
    });
    let expired = expiry(
        activity.clone(),
        limits.idle_timeout,
        limits.header_read_timeout,
        http1,
    );
    if protocol == Protocol::Http1 && builders.http1_engine == Http1Engine::Fngate {
        // fngate's own loop reads each head once and decides its framing
        // itself: its bytes need no following.
        let io = Tracked::new(stream, activity.clone(), false);
        let connection = h1::serve(
            io,
            handler,
            limits.max_header_bytes,
            activity,
            shutdown.clone(),
        );
        // The watcher is held to the end: the drain waits for this
        // connection too.
        return Box::pin(UntilExpired {
            connection,
            expired,
            _held: Some(watcher),
        });
    }
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let ambiguous = handler.activity.take_ambiguous();
            let answer = handler.handle(request, ambiguous);
            async move { Ok::<_, std::convert::Infallible>(answer.await) }
        });
    let io = TokioIo::new(Tracked::new(stream, activity, http1));
    // Each protocol's connection is its own type (and size): an HTTP/1.1
    // connection carries no HTTP/2 state.
    match protocol {
        Protocol::Http1 => Box::pin(UntilExpired {
            connection: watcher.watch(builders.http1.serve_connection(io, service)),
            expired,
            _held: None,
        }),
        Protocol::Http2 => Box::pin(UntilExpired {
            connection: watcher.watch(builders.http2.serve_connection(io, service)),
            expired,
            _held: None,
        }),
        Protocol::Sniff => Box::pin(UntilExpired {
            connection: watcher.watch(builders.auto.serve_connection(io, service).into_owned()),
            expired,
            _held: None,
        }),
    }
}

/// The handling of a connection's requests, the same whichever engine
/// reads them: who is on the other end, the body's pace and what is left
/// of it, result bytes held, and streamed answers kept in flight.
struct Handler {
    app: App,
    peer: Peer,
    pace: BodyPace,
    results: Arc<ResultBudget>,
    /// Answer bytes this connection holds unsent.
    held: Arc<std::sync::atomic::AtomicU64>,
    activity: Arc<Activity>,
    /// HTTP/1: an unusable leftover body closes the connection.
    http1: bool,
}

/// A request's answer, on its way.
type Answering =
    std::pin::Pin<Box<dyn std::future::Future<Output = http::Response<axum::body::Body>> + Send>>;

impl Handler {
    /// Answers `request` (a refusal when `ambiguous`: its head framed its
    /// body two ways). Call in the order requests are served: the request
    /// counts as in flight from this call on.
    fn handle<B>(self: &Arc<Self>, mut request: http::Request<B>, ambiguous: bool) -> Answering
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<body::BoxError>,
    {
        let peer = &self.peer;
        request.extensions_mut().insert(PeerAddr(peer.addr));
        if let Some(client) = &peer.client {
            request
                .extensions_mut()
                .insert(ClientCertificate(client.clone()));
        }
        if peer.plain {
            request.extensions_mut().insert(PlainListener);
        }
        let guard = RequestGuard::new(self.activity.clone());
        let this = self.clone();
        // Boxed: the request's future holds every state of its way
        // through the gateway (several KiB). hyper moves the future it
        // is given (into an HTTP/2 stream task, into its HTTP/1 state),
        // and tokio moves a task's future in and its output out: each
        // move copied all of it, 5,400 instructions per h2 request
        // (bench/profile.sh). A box is moved as a pointer.
        Box::pin(async move {
            if ambiguous {
                return refuse_ambiguous_framing();
            }
            let (response, leftover) = if http_body::Body::is_end_stream(request.body()) {
                let response = this.app.serve(request.map(axum::body::Body::new)).await;
                (response, Leftover::Done)
            } else {
                let expects_continue = request.headers().contains_key(http::header::EXPECT);
                let back = Arc::new(BodyReturn::default());
                let request = request.map(|body| {
                    axum::body::Body::new(RequestBody::new(body, this.pace, back.clone()))
                });
                let response = this.app.serve(request).await;
                (response, back.settle(expects_continue).await)
            };
            let mut response = this.results.hold(&this.held, response);
            if leftover == Leftover::Unusable && this.http1 {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            if response
                .extensions()
                .get::<crate::backend::StreamedAnswer>()
                .is_some()
            {
                // A streamed answer is in flight until its body ends:
                // a long wait between two items is not an idle
                // connection.
                return response.map(|body| {
                    axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
                        let _in_flight = &guard;
                        frame
                    }))
                });
            }
            drop(guard);
            response
        })
    }
}
