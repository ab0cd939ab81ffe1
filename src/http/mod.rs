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

pub use admission::{ClientCertificate, PeerAddr};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::middleware;

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

/// The gateway's router. Paths are matched by the handler itself, raw and
/// undecoded, so an encoded name (`%2F`, `%2e`) never reaches a function
/// other than the one named.
pub fn router(state: Arc<AppState>) -> Router {
    let cors = cors::layer(&state.cors);
    let mut router = Router::new().fallback(handlers::route).with_state(state);
    if let Some(cors) = cors {
        router = router.layer(cors);
    }
    router.layer(middleware::from_fn(context::request_context))
}
