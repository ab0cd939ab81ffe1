//! What a replica does when several share the store: it acts on the
//! others' events (a pending call wakes a dispatcher, an end wakes long
//! polls and the webhook sender, a cancel stops the run here, a map's
//! pending inputs get taken here too), extends the leases of what runs
//! here and takes over what lapsed elsewhere. With a store of one
//! gateway's own (no events, no leases) none of it runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::registry::Lookup;
use crate::store::{StoreEvent, TakenOver};

use super::Calls;

impl Calls {
    /// Acts on the store's events until `shutdown`.
    pub(super) async fn follow_events(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(mut events) = self.store.events() else {
            return;
        };
        loop {
            let event = tokio::select! {
                event = events.recv() => event,
                () = shutdown.cancelled() => return,
            };
            match event {
                Ok(event) => self.on_event(event),
                // Fell behind: whatever was missed is looked for again.
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "store events came faster than they were read; looking again"
                    );
                    self.on_event(StoreEvent::Resync);
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn on_event(self: &Arc<Self>, event: StoreEvent) {
        match event {
            StoreEvent::Pending { app, function } => {
                if let Some(wake) = self.wakes.of(&app, &function) {
                    wake.notify_one();
                }
            }
            StoreEvent::Ended(id) => self.announce_end(&id),
            StoreEvent::Cancelled(id) => {
                // Whatever runs it here stops; the cancel recorded its end.
                self.running.stop(&id);
                self.running.stop_inputs(&id);
                self.announce_end(&id);
            }
            StoreEvent::MapPending(id) => self.take_up_map(id),
            // Deploys are followed by the reloader (see `admin`).
            StoreEvent::Deployed => {}
            StoreEvent::Resync => {
                self.wakes.wake_all();
                self.waiters.wake_all();
                self.ended.notify_one();
                let calls = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = calls.resume_maps().await {
                        tracing::warn!(error = %e, "cannot read the open spawned maps");
                    }
                });
            }
        }
    }

    /// Runs map `id`'s pending inputs here too (as slots allow), unless
    /// this replica takes them already.
    fn take_up_map(self: &Arc<Self>, id: String) {
        let calls = self.clone();
        tokio::spawn(async move {
            let record = match calls.store.get(&id).await {
                Ok(Some(record)) => record,
                Ok(None) => return,
                Err(e) => {
                    return tracing::warn!(call_id = %id, error = %e, "cannot read a spawned map");
                }
            };
            if record.state.is_finished() {
                return;
            }
            let registry = calls.registry.current();
            if let Lookup::Found(function) = registry.lookup_key(&record.app, &record.function) {
                calls.start_map(function.clone(), id);
            }
        });
    }

    /// Every third of the claim timeout until `shutdown`: extends the
    /// leases of the calls and inputs that run here, then takes over the
    /// ones whose replica stopped extending theirs. A replica that lost
    /// the store for a while extends its own before it takes any over.
    pub(super) async fn keep_leases(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(every) = self.store.lease_every() else {
            return;
        };
        let every = every.max(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
            if let Err(e) = self.store.heartbeat(self.running.ids()).await {
                tracing::warn!(error = %e, "cannot extend the leases of the calls running here");
                continue;
            }
            match self.store.take_over().await {
                Ok(taken) => self.run_taken_over(taken),
                Err(e) => tracing::warn!(error = %e, "cannot take over lapsed calls"),
            }
        }
    }

    /// Wakes the dispatchers of what another replica left.
    fn run_taken_over(self: &Arc<Self>, taken: TakenOver) {
        if !taken.functions.is_empty() || !taken.maps.is_empty() {
            tracing::warn!(functions = ?taken.functions, maps = ?taken.maps, "took over the calls of a replica that stopped; they run again");
        }
        for (app, function) in taken.functions {
            if let Some(wake) = self.wakes.of(&app, &function) {
                wake.notify_one();
            }
        }
        for id in taken.maps {
            self.take_up_map(id);
        }
    }
}
