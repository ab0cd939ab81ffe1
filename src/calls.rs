//! Spawned calls: accepting them durably, dispatching pending ones to
//! their functions, reporting and cancelling them, long-poll wake-ups,
//! adopting sync calls that outlive the sync wait, and sweeping expired
//! results. Nothing here knows about HTTP.

use std::collections::HashMap;
use std::sync::Arc;
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

/// Most pending calls a dispatcher takes from the store in one write.
const CLAIM_BATCH: usize = 128;

/// How often an idle dispatcher looks in the store anyway, in case a
/// wake-up went missing.
const RECHECK: Duration = Duration::from_secs(5);

pub struct CallsConfig {
    pub result_ttl: Duration,
    pub max_pending: u64,
    pub max_wait: Duration,
}

pub struct Calls {
    store: Arc<dyn CallStore>,
    registry: Arc<Registry>,
    config: CallsConfig,
    /// Long-poll waiters by call id.
    waiters: DashMap<String, Arc<Notify>>,
    /// Calls running in this process, to stop them on cancel.
    running: DashMap<String, CancellationToken>,
    /// Per function: its dispatcher's wake-up, given when a call is stored.
    wakes: HashMap<(String, String), Arc<Notify>>,
    /// Wakes the webhook sender when a call ends.
    pub ended: Arc<Notify>,
    tasks: TaskTracker,
    /// Cancelled when the gateway starts to shut down: long polls answer.
    stopping: CancellationToken,
}

impl Calls {
    pub fn new(store: Arc<dyn CallStore>, registry: Arc<Registry>, config: CallsConfig) -> Calls {
        let wakes = registry
            .functions()
            .into_iter()
            .map(|f| {
                (
                    (f.app.to_string(), f.name.to_string()),
                    Arc::new(Notify::new()),
                )
            })
            .collect();
        Calls {
            store,
            registry,
            config,
            waiters: DashMap::new(),
            running: DashMap::new(),
            wakes,
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
        if self.store.pending() >= self.config.max_pending {
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
        match self.insert_and_wake(call).await? {
            Inserted::Created => Ok(Accepted {
                id,
                state: CallState::Pending,
            }),
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

    /// Stores a new call, then wakes its function's dispatcher, in a task
    /// of its own: a client that goes away mid-spawn drops the spawn's
    /// future, yet the write it started may still commit, and a call
    /// stored without its wake-up could wait for the next one.
    async fn insert_and_wake(&self, call: NewCall) -> Result<Inserted, StoreError> {
        let store = self.store.clone();
        let wake = self
            .wakes
            .get(&(call.app.clone(), call.function.clone()))
            .cloned();
        tokio::spawn(async move {
            let inserted = store.insert(call).await;
            if let (Ok(Inserted::Created), Some(wake)) = (&inserted, wake) {
                wake.notify_one();
            }
            inserted
        })
        .await
        .map_err(|e| StoreError::Io(format!("storing a call: {e}")))?
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
                // It runs again after a restart on a good store.
                Err(StoreError::Closed | StoreError::Broken(_)) => return,
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
        let key = (function.app.to_string(), function.name.to_string());
        let Some(wake) = self.wakes.get(&key).cloned() else {
            return;
        };
        // Calls left by a previous process may be waiting: look at once.
        let mut idle = false;
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
                let look = self.store.has_pending(&function.app, &function.name);
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
            .claim_batch(&function.app, &function.name, slots.len())
            .await?;
        let claimed = records.len();
        for (record, slot) in records.into_iter().zip(slots) {
            self.tasks
                .spawn(self.clone().run_spawned(function.clone(), record, slot));
        }
        Ok(claimed)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::http::HttpClients;
    use crate::config::Config;
    use crate::registry::Lookup;
    use crate::store::embedded::EmbeddedStore;
    use futures_util::FutureExt;

    /// `Calls` of one exec function `t/echo`, with its store in `dir`.
    fn calls(dir: &std::path::Path) -> (Arc<Calls>, Arc<Function>) {
        let text = r#"
            [apps.t.functions.echo]
            backend = "exec"
            command = ["sh", "-c", "cat > /dev/null; echo 1"]
        "#;
        let config = Config::from_toml(&dir.join("gateway.toml"), text).unwrap();
        let registry = Arc::new(Registry::from_config(&config, &HttpClients::new()));
        let Lookup::Found(function) = registry.lookup("t", "echo") else {
            panic!("t/echo is deployed");
        };
        let function = function.clone();
        let store = Arc::new(EmbeddedStore::open(&config.store.path).unwrap());
        let settings = CallsConfig {
            result_ttl: Duration::from_secs(60),
            max_pending: 1000,
            max_wait: Duration::from_secs(30),
        };
        (Arc::new(Calls::new(store, registry, settings)), function)
    }

    fn no_arguments() -> SpawnInput {
        SpawnInput::Arguments(Arguments::none())
    }

    #[tokio::test]
    async fn a_spawn_whose_client_left_mid_write_still_runs_and_so_do_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (calls, function) = calls(dir.path());
        let shutdown = CancellationToken::new();
        let dispatching = tokio::spawn(calls.clone().run(shutdown.clone(), Duration::ZERO));
        // A first call that ran: the dispatcher is at work.
        let first = calls
            .spawn(&function, no_arguments(), SpawnOptions::default())
            .await
            .unwrap();
        let record = calls.status(&first.id, Duration::from_secs(20)).await;
        assert_eq!(record.unwrap().unwrap().state, CallState::Succeeded);
        // Polled once, the spawn has handed its call to the store; then its
        // client goes away and the spawn's future is dropped, as a server
        // drops a request's future when its connection closes.
        let left = calls
            .spawn(&function, no_arguments(), SpawnOptions::default())
            .now_or_never();
        assert!(left.is_none(), "the spawn was still storing its call");
        let later = calls
            .spawn(&function, no_arguments(), SpawnOptions::default())
            .await
            .unwrap();
        let record = calls
            .status(&later.id, Duration::from_secs(20))
            .await
            .unwrap()
            .expect("the call is stored");
        assert_eq!(record.state, CallState::Succeeded, "{record:?}");
        // The call whose client left ran as well: nothing is left pending.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while calls.store.has_pending("t", "echo").await.unwrap() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "a call stays pending"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(calls.store.pending(), 0);
        shutdown.cancel();
        dispatching.await.unwrap().unwrap();
    }
}
