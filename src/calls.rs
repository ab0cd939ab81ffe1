//! Spawned calls: accepting them durably, dispatching pending ones to
//! their functions, reporting and cancelling them, long-poll wake-ups,
//! adopting sync calls that outlive the sync wait, and sweeping expired
//! results. Nothing here knows about HTTP.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::BackendError;
use crate::backend::http::StoredRequest;
use crate::dispatch::Slot;
use crate::invocation::{CallId, Invocation, Principal, Trace, deadline_ms_after, random_hex};
use crate::registry::{Function, Registry, Target};
use crate::store::{
    CallRecord, CallState, CallStore, Cancelled, FailureKind, Inserted, NewCall, Outcome,
    StoreError, now_ms,
};
use crate::translate::Arguments;

/// Why a spawn was refused.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the backlog of pending calls is full")]
    BacklogFull,
    #[error("this Idempotency-Key was used with another request")]
    IdempotencyMismatch,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a spawned call runs.
pub enum SpawnInput {
    /// An invocation with these arguments.
    Arguments(Arguments),
    /// A passthrough request, forwarded when the call runs.
    Forward(StoredRequest),
}

/// A spawn's answer: the call and its state (an idempotent repeat may
/// find it already running or finished).
#[derive(Debug)]
pub struct Accepted {
    pub id: String,
    pub state: CallState,
}

/// What a spawn carries besides its arguments.
#[derive(Debug, Default)]
pub struct SpawnOptions {
    /// Who alone may read and cancel the call (`None`: anyone with its id).
    pub owner: Option<String>,
    /// Who made it, for its backend.
    pub principal: Option<Principal>,
    /// `Idempotency-Key` and a digest of the request.
    pub idempotency: Option<(String, Vec<u8>)>,
    pub callback_url: Option<String>,
}

pub struct CallsConfig {
    pub result_ttl: Duration,
    pub max_pending: u64,
    pub max_wait: Duration,
}

pub struct Calls {
    store: Arc<dyn CallStore>,
    registry: Arc<Registry>,
    config: CallsConfig,
    /// Pending calls in the store (an estimate kept in step with writes).
    pending: AtomicU64,
    /// Long-poll waiters by call id.
    waiters: DashMap<String, Arc<Notify>>,
    /// Calls running in this process, to stop them on cancel.
    running: DashMap<String, CancellationToken>,
    /// Per function: its pending calls, and its dispatcher's wake-up.
    queues: HashMap<(String, String), Arc<Queue>>,
    /// Wakes the webhook sender when a call ends.
    pub ended: Arc<Notify>,
    tasks: TaskTracker,
    /// Cancelled when the gateway starts to shut down: long polls answer.
    stopping: CancellationToken,
}

impl Calls {
    pub fn new(store: Arc<dyn CallStore>, registry: Arc<Registry>, config: CallsConfig) -> Calls {
        let queues = registry
            .functions()
            .into_iter()
            .map(|f| {
                (
                    (f.app.to_string(), f.name.to_string()),
                    Arc::new(Queue::default()),
                )
            })
            .collect();
        Calls {
            store,
            registry,
            config,
            pending: AtomicU64::new(0),
            waiters: DashMap::new(),
            running: DashMap::new(),
            queues,
            ended: Arc::new(Notify::new()),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
        }
    }

    pub fn store(&self) -> &Arc<dyn CallStore> {
        &self.store
    }

    pub fn max_wait(&self) -> Duration {
        self.config.max_wait
    }

    fn expires_ms(&self) -> i64 {
        now_ms().saturating_add(self.config.result_ttl.as_millis() as i64)
    }

    /// Stores a new call for `function`; durable when this returns.
    pub async fn spawn(
        &self,
        function: &Function,
        input: SpawnInput,
        options: SpawnOptions,
    ) -> Result<Accepted, SpawnError> {
        if self.pending.load(Ordering::Acquire) >= self.config.max_pending {
            return Err(SpawnError::BacklogFull);
        }
        let id = CallId::generate().to_string();
        let (arguments, forward) = match input {
            SpawnInput::Arguments(arguments) => (arguments, None),
            SpawnInput::Forward(request) => (Arguments::none(), Some(request.to_bytes())),
        };
        let call = NewCall {
            id: id.clone(),
            app: function.app.to_string(),
            function: function.name.to_string(),
            args: arguments.args,
            kwargs: arguments.kwargs,
            forward,
            owner: options.owner,
            principal: options.principal,
            idempotency: options.idempotency,
            callback_url: options.callback_url,
            state: CallState::Pending,
            created_ms: now_ms(),
        };
        match self.store.insert(call).await? {
            Inserted::Created => {
                self.pending.fetch_add(1, Ordering::AcqRel);
                if let Some(queue) = self.queue(&function.app, &function.name) {
                    queue.pending.fetch_add(1, Ordering::AcqRel);
                    queue.wake.notify_one();
                }
                Ok(Accepted {
                    id,
                    state: CallState::Pending,
                })
            }
            Inserted::Existing {
                record,
                same_request: true,
            } => Ok(Accepted {
                id: record.id,
                state: record.state,
            }),
            Inserted::Existing { .. } => Err(SpawnError::IdempotencyMismatch),
        }
    }

    fn queue(&self, app: &str, function: &str) -> Option<&Arc<Queue>> {
        self.queues.get(&(app.to_owned(), function.to_owned()))
    }

    /// The call's record, waiting up to `wait` for it to end. `None` for
    /// an unknown or expired id.
    pub async fn status(&self, id: &str, wait: Duration) -> Result<Option<CallRecord>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait.min(self.config.max_wait);
        let result = loop {
            let waiter =
                (!wait.is_zero()).then(|| self.waiters.entry(id.to_owned()).or_default().clone());
            // Created before the read, so an end announced after it is not missed.
            let notified = waiter.as_ref().map(|w| w.notified());
            let record = match self.store.get(id).await {
                Ok(Some(record)) if !record.is_expired(now_ms()) => record,
                Ok(_) => break Ok(None),
                Err(e) => break Err(e),
            };
            if record.state.is_finished() || tokio::time::Instant::now() >= deadline {
                break Ok(Some(record));
            }
            let Some(notified) = notified else {
                break Ok(Some(record));
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = self.stopping.cancelled() => break Ok(Some(record)),
            }
        };
        self.waiters.remove_if(id, |_, w| Arc::strong_count(w) == 1);
        result
    }

    fn announce_end(&self, id: &str) {
        if let Some((_, waiter)) = self.waiters.remove(id) {
            waiter.notify_waiters();
        }
        self.ended.notify_one();
    }

    /// Cancels a call: a pending one never runs, a running one here is stopped.
    pub async fn cancel(&self, id: &str) -> Result<Cancelled, StoreError> {
        let answer = self
            .store
            .cancel(id.to_owned(), now_ms(), self.expires_ms())
            .await?;
        match answer {
            Cancelled::Now(CallState::Pending) => {
                decrement(&self.pending);
                self.announce_end(id);
            }
            Cancelled::Now(_) => {
                if let Some((_, running)) = self.running.remove(id) {
                    running.cancel();
                }
                self.announce_end(id);
            }
            Cancelled::AlreadyFinished(_) | Cancelled::NotFound => {}
        }
        Ok(answer)
    }

    /// Adopts a sync call that outlived the sync wait: stores it as running
    /// so it can be read and cancelled by id. `stop` stops its work.
    pub async fn adopt(
        &self,
        invocation: &Invocation,
        owner: Option<String>,
        stop: CancellationToken,
    ) -> Result<(), StoreError> {
        let call = NewCall {
            id: invocation.call_id.to_string(),
            app: invocation.app.to_string(),
            function: invocation.function.to_string(),
            args: invocation.args.clone(),
            kwargs: invocation.kwargs.clone(),
            owner,
            principal: invocation.principal.clone(),
            idempotency: None,
            callback_url: None,
            state: CallState::Running,
            forward: None,
            created_ms: now_ms(),
        };
        self.running.insert(call.id.clone(), stop);
        match self.store.insert(call).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.running.remove(invocation.call_id.as_str());
                Err(e)
            }
        }
    }

    /// Records how an adopted or spawned call ended and wakes its waiters.
    pub async fn finish(&self, id: &str, result: Result<bytes::Bytes, BackendError>) {
        self.record_end(id, outcome_of(result)).await;
    }

    async fn record_end(&self, id: &str, outcome: Outcome) {
        self.running.remove(id);
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .store
                .finish(id.to_owned(), outcome.clone(), self.expires_ms())
                .await
            {
                Ok(_) => break,
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::error!(call_id = id, error = %e, "cannot record a call's end; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.announce_end(id);
    }

    /// Runs work that must be given the grace period at shutdown (a sync
    /// call's task, which may outlive its request).
    pub fn spawn_task<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(work);
    }

    /// Waits, up to `grace`, until the work given to `spawn_task` has
    /// ended after shutdown. A worker runtime outlives its listener this
    /// long, so the sync calls it adopted get their grace period too.
    pub async fn settled(&self, grace: Duration) {
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }

    /// Recovers calls a previous process left behind, then runs one
    /// dispatcher per function and the sweeper until `shutdown`; then
    /// gives running spawned calls `grace` to finish.
    pub async fn run(
        self: Arc<Self>,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> Result<(), StoreError> {
        let counts = self.store.recover().await?;
        let mut pending = 0;
        for (function, count) in counts {
            pending += count;
            if let Some(queue) = self.queues.get(&function) {
                queue.pending.store(count, Ordering::Release);
            }
        }
        self.pending.store(pending, Ordering::Release);
        if pending > 0 {
            tracing::info!(pending, "pending calls found in the store");
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

    /// Runs one function's pending calls as slots allow. A slot is taken
    /// only when the function has pending calls, so an idle dispatcher
    /// never holds one that a sync caller could use.
    async fn dispatch(self: Arc<Self>, function: Arc<Function>, shutdown: CancellationToken) {
        let key = (function.app.to_string(), function.name.to_string());
        let Some(queue) = self.queues.get(&key).cloned() else {
            return;
        };
        loop {
            let woken = queue.wake.notified();
            if queue.pending.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    () = woken => continue,
                    () = shutdown.cancelled() => return,
                }
            }
            let slot = tokio::select! {
                slot = function.limiter.acquire_background() => slot,
                () = shutdown.cancelled() => return,
            };
            match self.store.claim_next(&function.app, &function.name).await {
                Ok(Some(record)) => {
                    decrement(&self.pending);
                    decrement(&queue.pending);
                    self.tasks
                        .spawn(self.clone().run_spawned(function.clone(), record, slot));
                }
                Ok(None) => {
                    // Cancelled meanwhile: the count was only a hint.
                    queue.pending.store(0, Ordering::Release);
                }
                Err(e) => {
                    drop(slot);
                    tracing::error!(app = %function.app, function = %function.name, error = %e, "cannot take a pending call");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn run_spawned(self: Arc<Self>, function: Arc<Function>, record: CallRecord, slot: Slot) {
        let stop = CancellationToken::new();
        self.running.insert(record.id.clone(), stop.clone());
        let trace = Trace {
            request_id: Arc::from(record.id.as_str()),
            traceparent: format!("00-{}-{}-01", random_hex::<16>(), random_hex::<8>()),
        };
        let deadline = tokio::time::Instant::now() + function.spec.timeout;
        let work = async {
            match (&function.target, &record.forward) {
                (Target::Invoke(backend), _) => {
                    let invocation = Invocation {
                        call_id: CallId::from_stored(record.id.clone()),
                        app: function.app.clone(),
                        function: function.name.clone(),
                        args: record.args.clone(),
                        kwargs: record.kwargs.clone(),
                        deadline_ms: deadline_ms_after(function.spec.timeout),
                        deadline,
                        attempt: record.attempt,
                        trace: trace.clone(),
                        principal: record.principal.clone(),
                    };
                    outcome_of(backend.invoke(&invocation).await)
                }
                (Target::Passthrough(backend), Some(stored)) => {
                    let answer = match StoredRequest::from_bytes(stored) {
                        Ok(request) => {
                            backend
                                .replay(&request, &trace, record.principal.as_ref(), deadline)
                                .await
                        }
                        Err(e) => Err(e),
                    };
                    match answer {
                        Ok(answer) => Outcome::Answered {
                            status: answer.status,
                            content_type: answer.content_type,
                            body: answer.body.to_vec(),
                        },
                        Err(e) => outcome_of(Err(e)),
                    }
                }
                (Target::Passthrough(_), None) => outcome_of(Err(BackendError::Garbage(
                    "a passthrough call without its request".to_owned(),
                ))),
            }
        };
        let outcome = tokio::select! {
            outcome = work => Some(outcome),
            () = stop.cancelled() => None,
        };
        if let Some(outcome) = outcome {
            self.record_end(&record.id, outcome).await;
        }
        drop(slot);
    }

    async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let every = self
            .config
            .result_ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            match self.store.sweep(now_ms()).await {
                Ok(0) => {}
                Ok(swept) => tracing::debug!(swept, "expired calls deleted"),
                Err(e) => tracing::warn!(error = %e, "sweeping expired calls failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// A function's backlog as this process knows it.
#[derive(Default)]
struct Queue {
    /// Pending calls in the store (a hint: cancels do not lower it).
    pending: AtomicU64,
    wake: Notify,
}

fn decrement(counter: &AtomicU64) {
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

/// How a backend's answer is stored.
pub fn outcome_of(result: Result<bytes::Bytes, BackendError>) -> Outcome {
    match result {
        Ok(body) => Outcome::Succeeded(body.to_vec()),
        Err(BackendError::Function { kind, message }) => Outcome::Failed {
            kind: FailureKind::Function,
            error_type: kind,
            message,
        },
        Err(BackendError::Timeout) => Outcome::TimedOut,
        Err(
            e
            @ (BackendError::Unreachable(_) | BackendError::Crashed(_) | BackendError::Garbage(_)),
        ) => {
            tracing::warn!(error = %e, "spawned call failed in its backend");
            Outcome::Failed {
                kind: FailureKind::Backend,
                error_type: "backend_error".to_owned(),
                message: String::new(),
            }
        }
    }
}
