//! Accepting a spawned call: storing it durably, answering idempotent
//! repeats, and waking its function's dispatcher.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::backend::http::StoredRequest;
use crate::dispatch::Slot;
use crate::invocation::{CallId, Principal};
use crate::registry::Function;
use crate::store::{CallRecord, CallState, Inserted, NewCall, Origin, StoreError, now_ms};
use crate::translate::Arguments;

use super::Calls;

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
    /// A class method's parameters, a JSON object (`{"size":"large"}`).
    pub parameters: Option<String>,
    /// The call that spawned it with its call token.
    pub origin: Option<Origin>,
}

impl Calls {
    /// Stores a new call for `function`; durable when this returns. A
    /// dispatcher takes it from the store.
    pub async fn spawn(
        &self,
        function: &Function,
        input: SpawnInput,
        options: SpawnOptions,
    ) -> Result<Accepted, SpawnError> {
        self.store_spawned(function, input, options, None).await
    }

    /// As `spawn`; and when no call waits in the store and `function` has a
    /// slot free now, the call is stored running (attempt 1) and starts at
    /// once: its insert is its claim, one durable write where a dispatcher's
    /// claim would be a second. After a crash it is a running call like any
    /// other: it runs again, attempt 2.
    pub async fn spawn_here(
        self: &Arc<Self>,
        function: &Arc<Function>,
        input: SpawnInput,
        options: SpawnOptions,
    ) -> Result<Accepted, SpawnError> {
        let start = self.slot_at_spawn(function).map(|slot| Start {
            calls: self.clone(),
            function: function.clone(),
            slot,
        });
        self.store_spawned(function, input, options, start).await
    }

    /// A slot for a call to start at its spawn: only once recovery is done
    /// and before shutdown, and only while nothing is pending, so that no
    /// call starts before an older one of its function.
    fn slot_at_spawn(&self, function: &Function) -> Option<Slot> {
        if !self.starts_at_spawn.load(Ordering::Acquire) || self.store.pending() > 0 {
            return None;
        }
        function.limiter.try_acquire_background()
    }

    /// Stores the call: running, and started, when it comes with a slot to
    /// start in.
    async fn store_spawned(
        &self,
        function: &Function,
        input: SpawnInput,
        options: SpawnOptions,
        start: Option<Start>,
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
            function: function.key.to_string(),
            args: arguments.args,
            kwargs: arguments.kwargs,
            forward,
            owner: options.owner,
            principal: options.principal,
            parameters: options.parameters,
            origin: options.origin,
            idempotency: options.idempotency,
            callback_url: options.callback_url,
            state: if start.is_some() {
                CallState::Running
            } else {
                CallState::Pending
            },
            from_sync: false,
            created_ms: now_ms(),
        };
        match self.insert_and_wake(call, start).await? {
            // Pending also when it has started already: accepted, not ended.
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

    /// Stores a new call, then wakes its function's dispatcher (or starts
    /// it, with `start`), in a task of its own: a client that goes away
    /// mid-spawn drops the spawn's future, yet the write it started may
    /// still commit, and a call stored without its wake-up could wait for
    /// the next one (stored running, it would never run).
    async fn insert_and_wake(
        &self,
        call: NewCall,
        start: Option<Start>,
    ) -> Result<Inserted, StoreError> {
        let store = self.store.clone();
        let wake = self.wakes.of(&call.app, &call.function);
        let claimed = start.as_ref().map(|_| claimed_record(&call));
        // Boxed here, and the run below: tokio moves a task's future into
        // its cell and again while polling; a pointer is cheaper to move
        // than the call it carries (memcpy under `OwnedTasks::bind` and
        // `set_stage`, bench/RESULTS.md).
        tokio::spawn(Box::pin(async move {
            let inserted = store.insert(call).await;
            if let Ok(Inserted::Created) = &inserted {
                match (start, claimed) {
                    (Some(start), Some(record)) => {
                        let run =
                            start
                                .calls
                                .clone()
                                .run_spawned(start.function, record, start.slot);
                        start.calls.tasks.spawn(Box::pin(run));
                    }
                    _ => {
                        if let Some(wake) = wake {
                            wake.notify_one();
                        }
                    }
                }
            }
            inserted
        }))
        .await
        .map_err(|e| StoreError::Io(format!("storing a call: {e}")))?
    }
}

/// What a call that starts at its spawn runs with.
struct Start {
    calls: Arc<Calls>,
    function: Arc<Function>,
    slot: Slot,
}

/// The record of `call` stored running, as a claim returns it.
fn claimed_record(call: &NewCall) -> CallRecord {
    CallRecord {
        id: call.id.clone(),
        app: call.app.clone(),
        function: call.function.clone(),
        args: call.args.clone(),
        kwargs: call.kwargs.clone(),
        owner: call.owner.clone(),
        callback_url: call.callback_url.clone(),
        state: CallState::Running,
        attempt: 1,
        created_ms: call.created_ms,
        started_ms: Some(call.created_ms),
        finished_ms: None,
        expires_ms: None,
        outcome: None,
        from_sync: false,
        forward: call.forward.clone(),
        principal: call.principal.clone(),
        parameters: call.parameters.clone(),
        origin: call.origin.clone(),
        map_inputs: None,
    }
}
