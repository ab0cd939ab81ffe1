//! Workers on other machines as instances of a pool: attached at their
//! first poll, watched until they lapse, detached then.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Endpoint, Instance, Live, Pool, Remote, shutting_down};
use crate::backend::BackendError;

impl Pool {
    /// The worker `worker` (the id it chose) as an instance of this pool:
    /// attached at its first poll, with `instance_concurrency` units, until
    /// it lapses (see [`crate::instances::remote`]) or its instance is retired.
    pub fn worker(&self, worker: &str) -> Result<Arc<Remote>, BackendError> {
        let mut state = self.lock();
        if state.closed {
            return Err(shutting_down());
        }
        let attached = state.workers.get(worker).and_then(|id| state.ready.get(id));
        if let Some(live) = attached
            && let Endpoint::Remote(remote) = &live.instance.endpoint
        {
            return Ok(remote.clone());
        }
        state.next_id += 1;
        let id = state.next_id;
        let remote = Remote::new(worker.to_owned());
        let (instance, stop) = Instance::remote(id, remote.clone());
        state.ready.insert(
            id,
            Live {
                instance,
                busy: 0,
                idle_since: Instant::now(),
                remote: true,
            },
        );
        state.workers.insert(worker.to_owned(), id);
        for _ in 0..self.spec.instance_concurrency.max(1) {
            self.give(&mut state, id);
        }
        drop(state);
        tracing::info!(pool = %self.label, worker, "a worker joined");
        self.instances
            .spawn(self.arc().watch_worker(id, remote.clone(), stop));
        Ok(remote)
    }

    /// The worker `worker`, when it is attached.
    pub fn attached_worker(&self, worker: &str) -> Option<Arc<Remote>> {
        let state = self.lock();
        let live = state.ready.get(state.workers.get(worker)?)?;
        match &live.instance.endpoint {
            Endpoint::Remote(remote) => Some(remote.clone()),
            Endpoint::Lambda(_) | Endpoint::Http(_) => None,
        }
    }

    /// Watches a worker until it lapses or its instance is retired; then
    /// detaches it.
    async fn watch_worker(self: Arc<Self>, id: u64, remote: Arc<Remote>, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(crate::instances::remote::WATCH_EVERY) => {
                    if remote.lapsed() {
                        break;
                    }
                }
                () = stop.cancelled() => break,
                () = self.closing.cancelled() => break,
            }
        }
        remote.close();
        tracing::info!(pool = %self.label, worker = %remote.worker, "a worker left");
        let mut state = self.lock();
        state.ready.remove(&id);
        state.free.retain(|&free| free != id);
        if state.workers.get(&remote.worker) == Some(&id) {
            state.workers.remove(&remote.worker);
        }
        if self.start_wanted(&mut state) {
            drop(state);
            self.changed.notify_one();
        }
    }
}
