//! Running spawned calls: recovering the calls a previous process left,
//! one dispatcher per function that takes pending calls as its slots
//! allow, and the grace period at shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Slot;
use crate::registry::{Function, Registry};
use crate::store::StoreError;

use super::Calls;

/// Most pending calls a dispatcher takes from the store in one write.
const CLAIM_BATCH: usize = 128;

/// How often an idle dispatcher looks in the store anyway, in case a
/// wake-up went missing.
const RECHECK: Duration = Duration::from_secs(5);

/// Per function (by app, then name): its dispatcher's wake-up, given when
/// a call for it is stored. Fixed at start: one per deployed function.
pub(super) struct Wakes(HashMap<String, HashMap<String, Arc<Notify>>>);

impl Wakes {
    pub(super) fn new(registry: &Registry) -> Wakes {
        let mut wakes: HashMap<String, HashMap<String, Arc<Notify>>> = HashMap::new();
        for f in registry.functions() {
            wakes
                .entry(f.app.to_string())
                .or_default()
                .insert(f.key.to_string(), Arc::new(Notify::new()));
        }
        Wakes(wakes)
    }

    /// The wake-up of `app/function`'s dispatcher; `None` if no such
    /// function is deployed.
    pub(super) fn of(&self, app: &str, function: &str) -> Option<&Arc<Notify>> {
        self.0.get(app)?.get(function)
    }
}

impl Calls {
    /// Recovers calls a previous process left behind, then runs one
    /// dispatcher per function and the sweeper until `shutdown`; then
    /// gives running spawned calls `grace` to finish.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<(), StoreError> {
        // A store that cannot write now (disk full) is waited for; a
        // broken one ends this, and the gateway with it.
        let counts = loop {
            match self.store.recover().await {
                Ok(counts) => break counts,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "cannot recover pending calls yet; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let pending: u64 = counts.iter().map(|(_, count)| count).sum();
        if pending > 0 {
            tracing::info!(pending, "pending calls found in the store");
        }
        if let Err(e) = self.resume_maps().await {
            tracing::error!(error = %e, "cannot read the spawned maps left open; they run after a restart");
        }
        let mut dispatchers = tokio::task::JoinSet::new();
        for function in self.registry.functions() {
            dispatchers.spawn(self.clone().dispatch(function.clone(), shutdown.clone()));
        }
        dispatchers.spawn(self.clone().sweep(shutdown.clone()));
        while dispatchers.join_next().await.is_some() {}
        self.stopping.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "grace period over with spawned calls still running; they run again after restart"
            );
        }
        Ok(())
    }

    /// Runs one function's pending calls as slots allow. It takes calls
    /// until the store has none left for the function, then waits for a
    /// spawn's wake-up (`notify_one` keeps a wake-up given while nobody
    /// waits, so a call stored meanwhile is not missed). Woken, it looks in
    /// the store (a read) before it takes slots, and holds them only while
    /// it takes calls for them, so an idle dispatcher never holds a slot
    /// that a sync caller could use.
    async fn dispatch(self: Arc<Self>, function: Arc<Function>, shutdown: CancellationToken) {
        let Some(wake) = self.wakes.of(&function.app, &function.key).cloned() else {
            return;
        };
        // Calls left by a previous process may be waiting: look at once,
        // with a read, so that a function with none never has a slot taken
        // from its first sync callers.
        let look = self.store.has_pending(&function.app, &function.key);
        let mut idle = !look.await.unwrap_or(true);
        // Slots to ask for: twice what the last round found, so a trickle
        // of calls does not tie up many slots and a backlog soon gets many.
        let mut want = 1;
        loop {
            if idle {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(RECHECK) => {}
                    () = shutdown.cancelled() => return,
                }
                // The wake-up may be for a call the last round took already.
                let look = self.store.has_pending(&function.app, &function.key);
                idle = !look.await.unwrap_or(true);
                continue;
            }
            let slots = tokio::select! {
                slots = function.limiter.acquire_background_many(want) => slots,
                () = shutdown.cancelled() => return,
            };
            let asked = slots.len();
            match self.claim_into(&function, slots).await {
                Ok(claimed) => {
                    // Fewer than asked: the store had no more for this function.
                    idle = claimed < asked;
                    want = (claimed * 2).clamp(1, CLAIM_BATCH);
                }
                Err(e) => {
                    tracing::error!(app = %function.app, function = %function.name, error = %e, "cannot take pending calls");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Takes up to one pending call per slot from the store, in one write,
    /// and runs each in its slot; the slots left over are freed. Returns
    /// how many calls it took.
    async fn claim_into(
        self: &Arc<Self>,
        function: &Arc<Function>,
        slots: Vec<Slot>,
    ) -> Result<usize, StoreError> {
        let records = self
            .store
            .claim_batch(&function.app, &function.key, slots.len())
            .await?;
        let claimed = records.len();
        for (record, slot) in records.into_iter().zip(slots) {
            self.tasks
                .spawn(self.clone().run_spawned(function.clone(), record, slot));
        }
        Ok(claimed)
    }
}
