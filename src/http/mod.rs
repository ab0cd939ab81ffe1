//! The HTTP face of the gateway: routing, the call handlers and the
//! middleware every request passes through. Below this module nothing
//! knows about HTTP framing (passthrough forwarding aside).

mod admission;
mod call_routes;
pub mod context;
mod cors;
mod handlers;
mod input;
pub mod problem;

pub use admission::{ClientCertificate, PeerAddr, PlainListener};
pub use input::BodyStalled;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use http::Response;
use tower_http::cors::Cors;

use crate::auth::Authenticator;
use crate::calls::Calls;
use crate::config::{Config, CorsConfig};
use crate::rate_limit::RateLimiter;
use crate::registry::Registry;
use crate::webhooks::Webhooks;

/// What every handler shares.
pub struct AppState {
    pub registry: Arc<Registry>,
    pub calls: Arc<Calls>,
    pub webhooks: Option<Arc<Webhooks>>,
    pub auth: Option<Authenticator>,
    pub rate_limiter: Option<RateLimiter>,
    pub cors: CorsConfig,
    pub max_body: u64,
    pub max_header_bytes: usize,
    pub max_json_depth: usize,
    pub sync_wait: Duration,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(
        registry: Arc<Registry>,
        calls: Arc<Calls>,
        webhooks: Option<Arc<Webhooks>>,
        auth: Option<Authenticator>,
        config: &Config,
    ) -> AppState {
        AppState {
            registry,
            calls,
            webhooks,
            auth,
            rate_limiter: config.rate_limit.as_ref().map(RateLimiter::new),
            cors: config.cors.clone(),
            max_body: config.server.max_body,
            max_header_bytes: config.server.max_header_bytes,
            max_json_depth: config.server.max_json_depth,
            sync_wait: config.server.sync_wait,
            draining: AtomicBool::new(false),
        }
    }

    /// Marks the gateway as shutting down: `/_/ready` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The gateway's request handling: the request context (id, trace, panic
/// guard, access log) around CORS (when configured) around the handlers.
/// Paths are matched by the handler itself, raw and undecoded, so an
/// encoded name (`%2F`, `%2e`) never reaches a function other than the
/// one named. Listeners call [`App::serve`] directly: no router, boxed
/// service or boxed future stands between a request and its handler.
#[derive(Clone)]
pub struct App {
    state: Arc<AppState>,
    cors: Option<Cors<Handlers>>,
}

/// The handlers as a tower service, for the CORS layer to wrap. (The
/// boxed future is paid only with CORS on.)
#[derive(Clone)]
pub struct Handlers(Arc<AppState>);

type BoxedResponse = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl tower::Service<Request> for Handlers {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move { Ok(handlers::route(&state, request).await) })
    }
}

impl App {
    /// Answers one request.
    pub async fn serve(&self, request: Request) -> Response<Body> {
        context::request_context(request, |request| async move {
            match &self.cors {
                None => handlers::route(&self.state, request).await,
                Some(cors) => {
                    use tower::Service;
                    match cors.clone().call(request).await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }
            }
        })
        .await
    }
}

/// The gateway's request handling over `state`.
pub fn router(state: Arc<AppState>) -> App {
    let cors = cors::layer(&state.cors).map(|layer| {
        use tower::Layer;
        layer.layer(Handlers(state.clone()))
    });
    App { state, cors }
}
