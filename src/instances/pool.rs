//! One pool of instances: who is free, who waits, when to start one more
//! (a cold start, up to `max_instances`), when an idle one stops (above
//! `min_instances`, after `idle_timeout`), and how failures back off.
//!
//! All of it is one small state machine behind a std `Mutex`, never held
//! across an `.await`: a call takes a free unit of an instance's capacity
//! (`instance_concurrency` units per instance) or queues for one; each
//! instance's own task ([`super::instance`]) reports when it is ready and
//! when it has gone; one maintenance task per pool stops idle instances
//! and starts the ones the pool should have.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::instance::{self, Endpoint, Instance};
use super::remote::Remote;

mod workers;
use super::{Instances, Protocol};
use crate::backend::BackendError;
use crate::config::PoolSpec;

/// The first pause before an instance is started again after a failure;
/// it doubles with each failure in a row.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest an idle instance above `min_instances` runs past its
/// `idle_timeout` before it is seen and stopped.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// The longest pause between two failed starts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A pool of warm instances of one function (or one parameter set of a class).
pub struct Pool {
    /// `app/function` or `app/class` with its parameters, for the log.
    pub(super) label: String,
    pub(super) spec: PoolSpec,
    pub(super) protocol: Protocol,
    /// Set for every instance on top of the spec's `env` (class parameters).
    pub(super) env: Vec<(String, String)>,
    pub(super) instances: Arc<Instances>,
    /// Cancelled when the pool closes: instances still starting stop too.
    pub(super) closing: CancellationToken,
    state: Mutex<State>,
    /// Its function's (or class's) instance series in `/_/metrics`.
    pub(super) metrics: Arc<crate::metrics::PoolMetrics>,
    /// Wakes the maintenance task: an instance went idle, ended, or failed.
    changed: Notify,
    me: Weak<Pool>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Instances started and not yet ready.
    starting: usize,
    ready: HashMap<u64, Live>,
    /// One entry per free unit of capacity; the most recently freed last,
    /// so that calls go to warm instances and the others can go idle.
    free: Vec<u64>,
    waiters: VecDeque<oneshot::Sender<Result<Grant, BackendError>>>,
    /// Failures in a row (failed starts and crashes), for the backoff.
    failures: u32,
    /// No instance is started before this, after a failure.
    retry_at: Option<Instant>,
    /// Why the last start failed, while starts keep failing: calls are
    /// answered with it at once rather than held.
    start_failure: Option<BackendError>,
    /// When a call last came (for the least recently used parameter set).
    last_used: Option<Instant>,
    /// Attached workers, by the id they chose, and their instance ids.
    workers: HashMap<String, u64>,
    /// Replacements owed for instances stopped mid-call or crashed: each
    /// is started even when no call waits (it idles out like any other).
    owed: usize,
    maintained: bool,
    closed: bool,
}

struct Live {
    instance: Arc<Instance>,
    busy: usize,
    idle_since: Instant,
    /// A worker on another machine: never started, scaled or idled here.
    remote: bool,
}

impl State {
    /// Instances this gateway runs itself, ready or starting.
    fn local(&self) -> usize {
        self.ready.values().filter(|live| !live.remote).count() + self.starting
    }
}

/// A unit of an instance's capacity, handed to a waiting call.
struct Grant(Arc<Instance>);

/// A call's hold on one instance (one unit of its capacity). Dropped, it
/// gives the unit back, unless [`Lease::retire`] stopped the instance.
pub struct Lease {
    pool: Arc<Pool>,
    instance: Arc<Instance>,
    retired: bool,
}

impl Lease {
    pub fn endpoint(&self) -> &super::Endpoint {
        &self.instance.endpoint
    }

    /// The instance's process id, for the log.
    pub fn instance_id(&self) -> u64 {
        self.instance.id
    }

    /// Stops the instance (its call timed out, was cancelled, or left it in
    /// an unknown state); the pool starts a replacement as needed.
    pub fn retire(mut self) {
        self.retired = true;
        self.pool.retire(self.instance.id);
    }

    /// Names the leased instance, so that it can be stopped from elsewhere
    /// (a cancel) while the call still holds the lease.
    pub fn instance_ref(&self) -> InstanceRef {
        InstanceRef {
            pool: self.pool.clone(),
            id: self.instance.id,
        }
    }

    /// Marks the call a success: failures in a row end.
    pub fn succeeded(&self) {
        self.pool.lock().failures = 0;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.retired {
            self.pool.release(self.instance.id);
        }
    }
}

/// A leased instance, by name.
#[derive(Clone)]
pub struct InstanceRef {
    pool: Arc<Pool>,
    id: u64,
}

impl InstanceRef {
    /// Stops the instance; the pool starts a replacement as needed.
    pub fn retire(&self) {
        self.pool.retire(self.id);
    }
}

/// Waits for a grant; dropped with a grant already sent, it gives the
/// grant back, so no unit of capacity is lost to a caller that left.
struct Waiting {
    pool: Arc<Pool>,
    receiver: oneshot::Receiver<Result<Grant, BackendError>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(Ok(Grant(instance))) = self.receiver.try_recv() {
            self.pool.release(instance.id);
        }
    }
}

impl Pool {
    pub(super) fn new(
        label: String,
        spec: PoolSpec,
        protocol: Protocol,
        env: Vec<(String, String)>,
        instances: &Arc<Instances>,
    ) -> Arc<Pool> {
        let metrics = crate::metrics::global().pool(&label);
        let pool = Arc::new_cyclic(|me| Pool {
            metrics,
            label,
            spec,
            protocol,
            env,
            instances: instances.clone(),
            closing: instances.stopping.child_token(),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            me: me.clone(),
        });
        instances.register(&pool);
        let state: Arc<dyn crate::metrics::PoolState> = pool.clone();
        pool.metrics.add_pool(Arc::downgrade(&state));
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no code panics holding the pool's lock")
    }

    fn arc(&self) -> Arc<Pool> {
        self.me.upgrade().expect("a pool in use is alive")
    }

    /// A unit of an instance's capacity for one call: a free one, else a
    /// new instance's (up to `max_instances`), else the next one freed.
    /// Fails at once while the pool's instances keep failing at start.
    pub async fn lease(&self) -> Result<Lease, BackendError> {
        let receiver = {
            let mut state = self.lock();
            state.last_used = Some(Instant::now());
            if state.closed {
                return Err(shutting_down());
            }
            if let Some(id) = state.free.pop() {
                let live = state
                    .ready
                    .get_mut(&id)
                    .expect("free units are of ready instances");
                live.busy += 1;
                let instance = live.instance.clone();
                return Ok(self.lease_of(instance));
            }
            if let Some(failure) = self.failing_now(&state) {
                return Err(failure);
            }
            let (sender, receiver) = oneshot::channel();
            state.waiters.push_back(sender);
            if self.start_wanted(&mut state) {
                // Held back by a backoff: the maintenance task starts one
                // when it ends.
                self.changed.notify_one();
            }
            receiver
        };
        self.ensure_maintained();
        let mut waiting = Waiting {
            pool: self.arc(),
            receiver,
        };
        let granted = (&mut waiting.receiver).await;
        match granted {
            Ok(Ok(Grant(instance))) => Ok(self.lease_of(instance)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(shutting_down()),
        }
    }

    fn lease_of(&self, instance: Arc<Instance>) -> Lease {
        Lease {
            pool: self.arc(),
            instance,
            retired: false,
        }
    }

    /// The error to answer with at once: the last start failed, nothing
    /// is running or starting, and the next start waits for its backoff.
    fn failing_now(&self, state: &State) -> Option<BackendError> {
        let failure = state.start_failure.as_ref()?;
        let waiting = state.retry_at.is_some_and(|at| Instant::now() < at);
        (waiting && state.ready.is_empty() && state.starting == 0).then(|| failure.clone())
    }

    /// Starts the instances the pool should have now: enough for the
    /// waiting calls (counting those starting) and `min_instances`, within
    /// `max_instances`, unless a failure's backoff holds starts back: then
    /// it returns true, and the maintenance task (which wakes when the
    /// backoff ends) starts them.
    fn start_wanted(&self, state: &mut State) -> bool {
        if state.closed || self.instances.is_stopping() {
            return false;
        }
        if state.retry_at.is_some_and(|at| Instant::now() < at) {
            return true;
        }
        state.waiters.retain(|waiter| !waiter.is_closed());
        let per_instance = self.spec.instance_concurrency.max(1);
        let live = state.local();
        let for_waiters = state.waiters.len().div_ceil(per_instance);
        let wanted =
            (live - state.starting + for_waiters.max(state.owed)).max(self.spec.min_instances);
        let room = self.spec.max_instances.saturating_sub(live);
        let more = wanted.saturating_sub(live).min(room);
        state.owed = state.owed.saturating_sub(more);
        for _ in 0..more {
            state.starting += 1;
            state.next_id += 1;
            let id = state.next_id;
            self.instances.spawn(instance::run(self.arc(), id));
        }
        false
    }

    /// An instance is ready: its capacity goes to the waiting calls first.
    pub(super) fn ready(&self, instance: Arc<Instance>) -> bool {
        let mut state = self.lock();
        state.starting -= 1;
        if state.closed {
            return false;
        }
        state.start_failure = None;
        state.retry_at = None;
        let id = instance.id;
        state.ready.insert(
            id,
            Live {
                instance: instance.clone(),
                busy: 0,
                idle_since: Instant::now(),
                remote: false,
            },
        );
        for _ in 0..self.spec.instance_concurrency.max(1) {
            self.give(&mut state, id);
        }
        drop(state);
        self.changed.notify_one();
        true
    }

    /// Hands a free unit of instance `id` to the first waiting call still
    /// there, or marks it free.
    fn give(&self, state: &mut State, id: u64) {
        let Some(live) = state.ready.get_mut(&id) else {
            return;
        };
        while let Some(waiter) = state.waiters.pop_front() {
            let instance = live.instance.clone();
            if waiter.send(Ok(Grant(instance))).is_ok() {
                live.busy += 1;
                return;
            }
        }
        if live.busy == 0 {
            live.idle_since = Instant::now();
        }
        state.free.push(id);
    }

    fn release(&self, id: u64) {
        let mut state = self.lock();
        match state.ready.get_mut(&id) {
            Some(live) => live.busy -= 1,
            None => return,
        }
        // An instance gone idle wakes no task: the maintenance task looks
        // again within a quarter of `idle_timeout` (at most a second) while
        // instances above `min_instances` run; a wake-up per call would cost
        // more than the call's own work.
        self.give(&mut state, id);
    }

    /// Takes an instance out of service and asks its task to stop it.
    fn retire(&self, id: u64) {
        let mut state = self.lock();
        if let Some(live) = state.ready.remove(&id) {
            state.free.retain(|&free| free != id);
            live.instance.stop();
            if !live.remote {
                state.owed += 1;
            }
        }
        if self.start_wanted(&mut state) {
            drop(state);
            self.changed.notify_one();
        }
    }

    /// A start failed (the process did not start, exited, timed out or
    /// reported an init error): the next start backs off, and while no
    /// instance is ready the waiting calls get the error at once (the other
    /// starts under way most likely fail alike; a call is not held for them).
    pub(super) fn start_failed(&self, error: BackendError) {
        tracing::warn!(pool = %self.label, error = %error, "an instance failed to start");
        let mut state = self.lock();
        state.starting -= 1;
        self.back_off(&mut state);
        if state.ready.is_empty() {
            for waiter in state.waiters.drain(..) {
                let _ = waiter.send(Err(error.clone()));
            }
        }
        state.start_failure = Some(error);
        drop(state);
        self.changed.notify_one();
    }

    /// A start ended because the pool closed.
    pub(super) fn start_ended(&self) {
        self.lock().starting -= 1;
    }

    /// A ready instance ended. One that was not asked to stop crashed: the
    /// replacement backs off.
    pub(super) fn gone(&self, id: u64, crashed: bool) {
        let mut state = self.lock();
        let was_serving = state.ready.remove(&id).is_some();
        state.free.retain(|&free| free != id);
        if crashed {
            self.back_off(&mut state);
            if was_serving {
                state.owed += 1;
            }
        }
        self.start_wanted(&mut state);
        drop(state);
        self.changed.notify_one();
    }

    fn back_off(&self, state: &mut State) {
        state.failures = state.failures.saturating_add(1);
        let doublings = state.failures.saturating_sub(1).min(16);
        let pause = FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF);
        state.retry_at = Some(Instant::now() + pause);
    }

    /// Stops taking calls and stops every instance.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.closing.cancel();
        for waiter in state.waiters.drain(..) {
            let _ = waiter.send(Err(shutting_down()));
        }
        state.free.clear();
        for (_, live) in state.ready.drain() {
            live.instance.stop();
        }
        drop(state);
        self.changed.notify_one();
    }

    pub(super) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// When a call last came, for choosing the least recently used set.
    pub(super) fn last_used(&self) -> Option<Instant> {
        self.lock().last_used
    }

    fn ensure_maintained(&self) {
        let mut state = self.lock();
        if !std::mem::replace(&mut state.maintained, true) {
            drop(state);
            self.instances.spawn(self.arc().maintenance());
        }
    }

    /// Starts the pool's maintenance task (once): it keeps `min_instances`
    /// warm.
    pub(super) fn maintain(&self) {
        self.ensure_maintained();
    }

    /// The pool's own task: starts what the pool should have once a
    /// backoff is over, and stops instances idle past `idle_timeout`
    /// while more than `min_instances` are alive.
    async fn maintenance(self: Arc<Self>) {
        loop {
            let wake_at = {
                let mut state = self.lock();
                if state.closed {
                    return;
                }
                self.stop_idle(&mut state);
                self.start_wanted(&mut state);
                self.next_wake(&state)
            };
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = self.changed.notified() => {}
                () = self.instances.stopping.cancelled() => {
                    self.close();
                    return;
                }
            }
        }
    }

    fn stop_idle(&self, state: &mut State) {
        let now = Instant::now();
        let timeout = self.spec.idle_timeout;
        let mut idle: Vec<(Instant, u64)> = state
            .ready
            .iter()
            .filter(|(_, live)| !live.remote && live.busy == 0 && live.idle_since + timeout <= now)
            .map(|(&id, live)| (live.idle_since, id))
            .collect();
        idle.sort();
        for (_, id) in idle {
            if state.local() <= self.spec.min_instances {
                break;
            }
            if let Some(live) = state.ready.remove(&id) {
                state.free.retain(|&free| free != id);
                tracing::debug!(pool = %self.label, instance = id, "stopping an idle instance");
                live.instance.stop();
            }
        }
    }

    fn next_wake(&self, state: &State) -> Option<Instant> {
        // Above min_instances, an instance may go idle at any time without
        // a wake-up (see `release`): look again within a quarter of the
        // idle timeout (at most a second), or at the first idle deadline.
        let idle = (state.local() > self.spec.min_instances).then(|| {
            let recheck = Instant::now() + (self.spec.idle_timeout / 4).min(IDLE_RECHECK);
            state
                .ready
                .values()
                .filter(|live| !live.remote && live.busy == 0)
                .map(|live| live.idle_since + self.spec.idle_timeout)
                .min()
                .map_or(recheck, |deadline| deadline.min(recheck))
        });
        let wants_start =
            !state.waiters.is_empty() || state.owed > 0 || state.local() < self.spec.min_instances;
        let retry = state.retry_at.filter(|_| wants_start);
        [idle, retry].into_iter().flatten().min()
    }

    /// How many instances are ready and how many are starting (for tests
    /// and the log).
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.ready.len(), state.starting)
    }
}

impl crate::metrics::PoolState for Pool {
    fn instance_states(&self) -> crate::metrics::InstanceStates {
        let state = self.lock();
        let busy = state.ready.values().filter(|live| live.busy > 0).count();
        crate::metrics::InstanceStates {
            starting: state.starting as u64,
            idle: (state.ready.len() - busy) as u64,
            busy: busy as u64,
        }
    }
}

fn shutting_down() -> BackendError {
    BackendError::Unreachable("the gateway is shutting down".to_owned())
}
