//! Accepting a spawned call: storing it durably, answering idempotent
//! repeats, and waking its function's dispatcher.

use crate::backend::http::StoredRequest;
use crate::invocation::{CallId, Principal};
use crate::registry::Function;
use crate::store::{CallState, Inserted, NewCall, Origin, StoreError, now_ms};
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
        let wake = self.wakes.of(&call.app, &call.function);
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
}
