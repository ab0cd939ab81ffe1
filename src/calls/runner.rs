//! Running spawned calls: recovering the calls a previous process left,
//! one dispatcher per function that takes pending calls as its slots
//! allow, and the grace period at shutdown.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatch::Slot;
use crate::registry::{Function, Lookup, Registry};
use crate::store::{FailureKind, Outcome, StoreError};

use super::Calls;

/// The stored error type of a call whose function was removed before it ran.
pub const FUNCTION_REMOVED: &str = "function_removed";

/// Most pending calls a dispatcher takes from the store in one write.
const CLAIM_BATCH: usize = 128;

/// How often an idle dispatcher looks in the store anyway, in case a
/// wake-up went missing.
const RECHECK: Duration = Duration::from_secs(5);

/// Per function (by app, then name): its dispatcher's wake-up, given when
/// a call for it is stored. A function keeps its wake-up across versions;
/// the map is replaced whole when the functions change.
pub(super) struct Wakes(ArcSwap<WakeMap>);

type WakeMap = HashMap<String, HashMap<String, Arc<Notify>>>;

impl Wakes {
    pub(super) fn new(registry: &Registry) -> Wakes {
        let wakes = Wakes(ArcSwap::from_pointee(HashMap::new()));
        wakes.follow(registry);
        wakes
    }

    /// One wake-up per function of `registry`: the one it had, if any.
    fn follow(&self, registry: &Registry) {
        let old = self.0.load();
        let mut wakes: WakeMap = HashMap::new();
        for f in registry.functions() {
            let wake = old
                .get(&*f.app)
                .and_then(|functions| functions.get(&*f.key))
                .cloned()
                .unwrap_or_default();
            wakes
                .entry(f.app.to_string())
                .or_default()
                .insert(f.key.to_string(), wake);
        }
        self.0.store(Arc::new(wakes));
    }

    /// Wakes every dispatcher: each looks in the store.
    pub(super) fn wake_all(&self) {
        for functions in self.0.load().values() {
            for wake in functions.values() {
                wake.notify_one();
            }
        }
    }

    /// The wake-up of `app/function`'s dispatcher; `None` if no such
    /// function is deployed.
    pub(super) fn of(&self, app: &str, function: &str) -> Option<Arc<Notify>> {
        self.0.load().get(app)?.get(function).cloned()
    }
}

/// A function's app and key (`name`, or `class.method`).
type FunctionKey = (Arc<str>, Arc<str>);

/// The dispatcher of each function version, by app and key, with the
/// token that stops it; empty until `Calls::run` starts them.
#[derive(Default)]
pub(super) struct Dispatchers {
    running: Mutex<HashMap<FunctionKey, (Arc<Function>, CancellationToken)>>,
    tasks: TaskTracker,
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
        // Recovery has put back what ran before: a spawn may now store its
        // call running and start it.
        self.starts_at_spawn.store(true, Ordering::Release);
        // One dispatcher per function, following reloads and deploys.
        let mut swaps = self.registry.swaps();
        swaps.mark_changed();
        let sweeper = tokio::spawn(self.clone().sweep(shutdown.clone()));
        // With a store shared by replicas: the others' events, and leases.
        let events = tokio::spawn(self.clone().follow_events(shutdown.clone()));
        // Leases are kept through the grace period too: calls still
        // running then must not be taken over by another replica.
        let leases_stop = CancellationToken::new();
        let leases = tokio::spawn(self.clone().keep_leases(leases_stop.clone()));
        loop {
            tokio::select! {
                changed = swaps.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.follow(&self.registry.current(), &shutdown);
                }
                () = shutdown.cancelled() => break,
            }
        }
        self.starts_at_spawn.store(false, Ordering::Release);
        self.dispatchers.tasks.close();
        self.dispatchers.tasks.wait().await;
        let _ = sweeper.await;
        let _ = events.await;
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
        leases_stop.cancel();
        let _ = leases.await;
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
        let Some(wake) = self.wakes.of(&function.app, &function.key) else {
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

    /// Gives every function of `registry` a dispatcher: a function new
    /// here, or of a new version, gets one of its own and the previous
    /// version's stops (its calls in flight run on). The pending calls of
    /// a function no longer deployed end failed.
    fn follow(self: &Arc<Self>, registry: &Registry, shutdown: &CancellationToken) {
        self.wakes.follow(registry);
        let mut running = self
            .dispatchers
            .running
            .lock()
            .expect("no code panics holding this lock");
        let mut next = HashMap::new();
        for function in registry.functions() {
            let key = (function.app.clone(), function.key.clone());
            let kept = match running.remove(&key) {
                Some((old, stop)) if Arc::ptr_eq(&old, function) => Some((old, stop)),
                // A new version: the previous one's dispatcher stops.
                Some((_, stop)) => {
                    stop.cancel();
                    None
                }
                None => None,
            };
            let entry = kept.unwrap_or_else(|| {
                let stop = shutdown.child_token();
                let dispatch = self.clone().dispatch(function.clone(), stop.clone());
                self.dispatchers.tasks.spawn(dispatch);
                (function.clone(), stop)
            });
            next.insert(key, entry);
        }
        // What is left was replaced or removed.
        for ((app, key), (_, stop)) in running.drain() {
            stop.cancel();
            if !next.contains_key(&(app.clone(), key.clone())) {
                self.dispatchers
                    .tasks
                    .spawn(self.clone().fail_removed(app, key));
            }
        }
        *running = next;
    }

    /// Ends the pending calls of `app`/`key`, which is no longer deployed,
    /// failed with a clear error, unless it is deployed again meanwhile.
    async fn fail_removed(self: Arc<Self>, app: Arc<str>, key: Arc<str>) {
        let mut failed = 0;
        loop {
            let deployed = self.registry.current();
            if let Lookup::Found(_) = deployed.lookup_key(&app, &key) {
                break;
            }
            let records = match self.store.claim_batch(&app, &key, CLAIM_BATCH).await {
                Ok(records) => records,
                Err(e) => {
                    tracing::error!(%app, function = %key, error = %e, "cannot end the pending calls of a removed function");
                    break;
                }
            };
            let took = records.len();
            for record in records {
                let outcome = Outcome::Failed {
                    kind: FailureKind::Backend,
                    error_type: FUNCTION_REMOVED.to_owned(),
                    message: format!(
                        "{app}/{} was removed from the gateway before this call ran",
                        key.replace('.', "/")
                    ),
                };
                self.record_end(&record.id, outcome).await;
                failed += 1;
            }
            if took < CLAIM_BATCH {
                break;
            }
        }
        if failed > 0 {
            tracing::warn!(%app, function = %key, failed, "pending calls of a removed function ended failed");
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
            let run = self.clone().run_spawned(function.clone(), record, slot);
            self.tasks.spawn(Box::pin(run));
        }
        Ok(claimed)
    }
}
