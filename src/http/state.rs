//! What every phase of a request shares: the registry, the calls, the
//! credential checks and the limits, and whether the gateway is draining.
//! The bottom of the HTTP layer: every other file may use it, it uses none.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::auth::Authenticator;
use crate::calls::Calls;
use crate::config::{Config, CorsConfig};
use crate::rate_limit::RateLimiter;
use crate::registry::LiveRegistry;
use crate::webhooks::Webhooks;

/// What every handler shares.
pub struct AppState {
    /// What is deployed now: swapped by reloads and deploys.
    pub registry: Arc<LiveRegistry>,
    pub calls: Arc<Calls>,
    pub webhooks: Option<Arc<Webhooks>>,
    pub auth: Option<Authenticator>,
    pub rate_limiter: Option<RateLimiter>,
    pub cors: CorsConfig,
    pub max_body: u64,
    /// Largest result a backend (or a worker) may return.
    pub max_result: u64,
    pub max_header_bytes: usize,
    pub max_json_depth: usize,
    /// Most inputs one map takes (`max_map_inputs`).
    pub max_map_inputs: usize,
    pub sync_wait: Duration,
    /// Deepest a function-to-function call may nest (`max_call_depth`).
    pub max_call_depth: u32,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(
        registry: Arc<LiveRegistry>,
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
            max_result: config.server.max_result,
            max_header_bytes: config.server.max_header_bytes,
            max_json_depth: config.server.max_json_depth,
            max_map_inputs: config.server.max_map_inputs,
            sync_wait: config.server.sync_wait,
            max_call_depth: config.server.max_call_depth,
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

/// A gateway's state over `demo/square` (exec, `POST` and `GET`), for the
/// unit tests of the routes. The store's file goes with its folder: these
/// tests read no calls back.
#[cfg(test)]
pub fn for_tests() -> Arc<AppState> {
    use crate::backend::http::HttpClients;
    use crate::calls::CallsConfig;
    use crate::store::embedded::EmbeddedStore;

    let text = r#"
        [apps.demo.functions.square]
        backend = "exec"
        command = ["true"]
        methods = ["POST", "GET"]
    "#;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml(&dir.path().join("gateway.toml"), text).unwrap();
    let registry = LiveRegistry::new(crate::registry::Registry::from_config(
        &config,
        &HttpClients::new(),
    ));
    let store = Arc::new(EmbeddedStore::open(&config.store.path).unwrap());
    let settings = CallsConfig {
        result_ttl: config.store.result_ttl,
        max_pending: config.store.max_pending,
        max_wait: config.store.max_wait,
    };
    let calls = Arc::new(Calls::new(store, registry.clone(), settings));
    drop(dir);
    Arc::new(AppState::new(registry, calls, None, None, &config))
}
