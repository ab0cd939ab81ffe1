//! Cancelling calls, and the stop tokens of the calls running in this
//! process that a cancel fires.

use std::sync::Arc;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::registry::{Lookup, Registry, Target};

use crate::store::{Cancelled, StoreError, now_ms};

use super::Calls;

/// The calls running in this process, by id, each with the token that
/// stops its work and the backend that runs it.
#[derive(Default)]
pub(super) struct Running(DashMap<String, (CancellationToken, Option<Arc<dyn Backend>>)>);

impl Running {
    /// Notes that `id` runs here until `forget`, stopped by `stop`, on the
    /// function `app`/`key` of `registry`.
    pub(super) fn track(
        &self,
        id: String,
        stop: CancellationToken,
        registry: &Registry,
        app: &str,
        key: &str,
    ) {
        let backend = match registry.lookup_key(app, key) {
            Lookup::Found(function) => match &function.target {
                Target::Invoke(backend) => Some(backend.clone()),
                Target::Passthrough(_) => None,
            },
            Lookup::NoApp | Lookup::NoFunction => None,
        };
        self.0.insert(id, (stop, backend));
    }

    /// The ids of what runs here (calls, and map inputs as `{map id}-{index}`).
    pub(super) fn ids(&self) -> Vec<String> {
        self.0.iter().map(|entry| entry.key().clone()).collect()
    }

    /// Notes that `id` no longer runs here.
    pub(super) fn forget(&self, id: &str) {
        self.0.remove(id);
    }

    /// Stops the runs of map `id`'s inputs that run here (their ids are
    /// the map's with `-{index}`).
    pub(super) fn stop_inputs(&self, id: &str) {
        let prefix = format!("{id}-");
        let inputs: Vec<String> = self
            .0
            .iter()
            .filter(|entry| entry.key().starts_with(&prefix))
            .map(|entry| entry.key().clone())
            .collect();
        for input in inputs {
            self.stop(&input);
        }
    }

    /// Stops `id`'s work, if it runs here: its backend first stops what
    /// runs it (an instance), while the work still holds it; then the work
    /// is dropped.
    pub(super) fn stop(&self, id: &str) {
        if let Some((_, (running, backend))) = self.0.remove(id) {
            if let Some(backend) = backend {
                backend.abort(id);
            }
            running.cancel();
        }
    }
}

impl Calls {
    /// Cancels a call: a pending one never runs, a running one here is stopped.
    pub async fn cancel(&self, id: &str) -> Result<Cancelled, StoreError> {
        let answer = self
            .store
            .cancel(id.to_owned(), now_ms(), self.expires_ms())
            .await?;
        match answer {
            Cancelled::Now(state) => {
                self.running.stop(id);
                // A map (always running until it ends): its inputs' runs too.
                if state == crate::store::CallState::Running {
                    self.running.stop_inputs(id);
                }
                self.announce_end(id);
            }
            Cancelled::AlreadyFinished(_) | Cancelled::NotFound => {}
        }
        Ok(answer)
    }
}
