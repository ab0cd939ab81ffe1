//! Spawned calls: accepting them durably, dispatching pending ones to
//! their functions, reporting and cancelling them, long-poll wake-ups,
//! adopting sync calls that outlive the sync wait, and sweeping expired
//! results. Nothing here knows about HTTP.
//!
//! `Calls` is the facade; each job lives in its own file and keeps its
//! own state in a small type that `Calls` owns.

mod adopt;
mod cancel;
mod execute;
mod map;
pub mod retry;
mod runner;
mod shared;
mod spawn;
mod status;
mod sweep;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::CallTokens;
use crate::registry::LiveRegistry;
use crate::store::{CallStore, now_ms};

pub use execute::outcome_of;
pub use runner::FUNCTION_REMOVED;
pub use spawn::{Accepted, SpawnError, SpawnInput, SpawnOptions};

pub struct CallsConfig {
    pub result_ttl: Duration,
    pub max_pending: u64,
    pub max_wait: Duration,
}

pub struct Calls {
    store: Arc<dyn CallStore>,
    registry: Arc<LiveRegistry>,
    config: CallsConfig,
    /// Long-poll waiters by call id.
    waiters: status::Waiters,
    /// Calls running in this process, to stop them on cancel.
    running: cancel::Running,
    /// Per function: its dispatcher's wake-up, given when a call is stored.
    wakes: runner::Wakes,
    /// Per function version: its dispatcher, stopped when a reload or a
    /// deploy replaces the version.
    dispatchers: runner::Dispatchers,
    /// The spawned maps whose inputs this replica takes now, each with a
    /// flag set when more were announced meanwhile (its task looks again).
    maps_here: dashmap::DashMap<String, Arc<std::sync::atomic::AtomicBool>>,
    /// Wakes the webhook sender when a call ends.
    pub ended: Arc<Notify>,
    /// Work given the grace period at shutdown: spawned calls running
    /// here and the tasks of adopted sync calls.
    tasks: TaskTracker,
    /// Cancelled when the gateway starts to shut down: long polls answer.
    stopping: CancellationToken,
    /// A spawn may start its call at once (see `spawn::Calls::spawn_here`):
    /// set once the calls a previous process left are recovered, cleared
    /// when shutdown begins.
    starts_at_spawn: std::sync::atomic::AtomicBool,
    /// Mints every call's `FNGATE_CALL_TOKEN` and checks those presented
    /// back, under a key of this gateway's own.
    tokens: CallTokens,
}

impl Calls {
    pub fn new(
        store: Arc<dyn CallStore>,
        registry: Arc<LiveRegistry>,
        config: CallsConfig,
    ) -> Calls {
        let wakes = runner::Wakes::new(&registry.current());
        Calls {
            store,
            registry,
            config,
            waiters: status::Waiters::default(),
            running: cancel::Running::default(),
            wakes,
            dispatchers: runner::Dispatchers::default(),
            maps_here: dashmap::DashMap::new(),
            ended: Arc::new(Notify::new()),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
            starts_at_spawn: std::sync::atomic::AtomicBool::new(false),
            tokens: CallTokens::generate(),
        }
    }

    /// Signs call tokens with `secret` (shared by every replica of a shared
    /// store) instead of a key of this gateway's own.
    pub fn with_token_secret(mut self, secret: &[u8]) -> Calls {
        self.tokens = CallTokens::from_secret(secret);
        self
    }

    /// The call tokens of this gateway's calls.
    pub fn tokens(&self) -> &CallTokens {
        &self.tokens
    }

    pub fn store(&self) -> &Arc<dyn CallStore> {
        &self.store
    }

    pub fn max_wait(&self) -> Duration {
        self.config.max_wait
    }

    /// When a call that ends now expires.
    fn expires_ms(&self) -> i64 {
        now_ms().saturating_add(self.config.result_ttl.as_millis() as i64)
    }
}
