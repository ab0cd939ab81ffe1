//! The HTTP face of the gateway: routing, the call handlers and the
//! middleware every request passes through. Below this module nothing
//! knows about HTTP framing (passthrough forwarding aside).

pub mod context;
mod handlers;
pub mod problem;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::middleware;

use crate::config::ServerConfig;
use crate::registry::Registry;

/// What every handler shares.
pub struct AppState {
    pub registry: Registry,
    pub max_body: u64,
    pub max_json_depth: usize,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(registry: Registry, server: &ServerConfig) -> AppState {
        AppState {
            registry,
            max_body: server.max_body,
            max_json_depth: server.max_json_depth,
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
    Router::new()
        .fallback(handlers::route)
        .with_state(state)
        .layer(middleware::from_fn(context::request_context))
}
