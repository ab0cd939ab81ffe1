//! The call store: where spawned calls, their results and their pending
//! webhook deliveries live, durably. `CallStore` is the seam; the embedded
//! SQLite store is the default, the Redis store is shared by any number of
//! gateway replicas (see `redis`).

pub mod deploys;
pub mod embedded;
pub mod map;
pub mod redis;

use crate::invocation::Principal;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The life of a spawned call: pending -> running -> one of the ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Pending => "pending",
            CallState::Running => "running",
            CallState::Succeeded => "succeeded",
            CallState::Failed => "failed",
            CallState::TimedOut => "timed_out",
            CallState::Cancelled => "cancelled",
        }
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, CallState::Pending | CallState::Running)
    }

    pub(crate) fn code(self) -> i64 {
        match self {
            CallState::Pending => 0,
            CallState::Running => 1,
            CallState::Succeeded => 2,
            CallState::Failed => 3,
            CallState::TimedOut => 4,
            CallState::Cancelled => 5,
        }
    }

    pub(crate) fn from_code(code: i64) -> Option<CallState> {
        Some(match code {
            0 => CallState::Pending,
            1 => CallState::Running,
            2 => CallState::Succeeded,
            3 => CallState::Failed,
            4 => CallState::TimedOut,
            5 => CallState::Cancelled,
            _ => return None,
        })
    }
}

/// Why a failed call failed, as the client will be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The function ran and reported an error (500 `function_error`).
    Function,
    /// The backend was unreachable, crashed or answered garbage (502).
    Backend,
}

impl FailureKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailureKind::Function => "function",
            FailureKind::Backend => "backend",
        }
    }

    pub(crate) fn parse(text: &str) -> FailureKind {
        if text == "function" {
            FailureKind::Function
        } else {
            FailureKind::Backend
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The function's JSON result.
    Succeeded(Vec<u8>),
    /// A passthrough function's answer, kept as the backend gave it.
    Answered {
        status: u16,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    Failed {
        kind: FailureKind,
        error_type: String,
        message: String,
    },
    TimedOut,
}

/// A call to be stored.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub id: String,
    pub app: String,
    pub function: String,
    pub args: String,
    pub kwargs: String,
    /// Who may read and cancel it (`None`: anyone holding the id).
    pub owner: Option<String>,
    /// `Idempotency-Key` and a digest of the request it came with.
    pub idempotency: Option<(String, Vec<u8>)>,
    pub callback_url: Option<String>,
    /// `Pending`, or `Running` for a call that starts as it is stored: a
    /// sync call that outlived the sync wait, or a spawned call that found
    /// a free slot.
    pub state: CallState,
    /// A sync call that outlived the sync wait: its client was redirected
    /// to the call and waits for its result.
    pub from_sync: bool,
    /// A passthrough call: the request to forward, as stored bytes.
    pub forward: Option<Vec<u8>>,
    /// Who made it, passed to its backend when it runs.
    pub principal: Option<Principal>,
    /// A class method's parameters, a JSON object (`{"size":"large"}`).
    pub parameters: Option<String>,
    /// The call that spawned it with its call token, and what its
    /// original caller may call.
    pub origin: Option<Origin>,
    pub created_ms: i64,
}

/// What a stored call's runs need of where it came from to mint their
/// call tokens: the call that made it through its token (its runs nest
/// under it), and the original caller's scopes.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Origin {
    /// The parent call's id (`parent_call_id` in `GET /calls/{id}`), for a
    /// call another function's call made.
    #[serde(skip)]
    pub parent_call_id: Option<String>,
    /// How deep this call nests (0 for a client's call, 1 for a call a
    /// client's call made).
    #[serde(default)]
    pub depth: u32,
    /// The W3C trace id its runs continue (`None`: a new trace per run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The original caller's `invoke:` scopes, which its call token passes on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// A stored call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub id: String,
    pub app: String,
    pub function: String,
    pub args: String,
    pub kwargs: String,
    pub owner: Option<String>,
    pub callback_url: Option<String>,
    pub state: CallState,
    /// Runs started so far (1 on the first run; more after a restart).
    pub attempt: u32,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub expires_ms: Option<i64>,
    pub outcome: Option<Outcome>,
    /// A sync call that outlived the sync wait: its client was redirected
    /// here and waits for the result.
    pub from_sync: bool,
    /// A passthrough call's request to forward.
    pub forward: Option<Vec<u8>>,
    pub principal: Option<Principal>,
    /// A class method's parameters, a JSON object (`{"size":"large"}`).
    pub parameters: Option<String>,
    /// The call that made it with its call token, and what its original
    /// caller may call.
    pub origin: Option<Origin>,
    /// A spawned map (`.../map/spawn`): how many inputs it has. Its inputs
    /// and their outcomes are read with `map_progress` and `map_page`.
    pub map_inputs: Option<u64>,
}

impl CallRecord {
    /// True once a finished call's retention has passed.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_ms.is_some_and(|expires| expires <= now_ms)
    }
}

/// The answer to an insert.
#[derive(Debug)]
pub enum Inserted {
    Created,
    /// The idempotency key was already used: the call it made, and whether
    /// it was made with the same request.
    Existing {
        record: Box<CallRecord>,
        same_request: bool,
    },
}

/// The answer to a cancel.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// The call was pending or running (its state before) and is now cancelled.
    Now(CallState),
    /// The call had already ended in this state.
    AlreadyFinished(CallState),
    NotFound,
}

/// Pending calls per `(app, function)`.
pub type PendingCounts = Vec<((String, String), u64)>;

/// Deliveries due now, and when the next one falls due.
pub type Due = (Vec<Delivery>, Option<i64>);

/// A webhook delivery that is due.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub call_id: String,
    pub url: String,
    /// Attempts made so far.
    pub attempts: u32,
}

/// What another replica sharing the store did, that this one must act on.
/// A store of one gateway (the embedded one) has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A function has pending calls (spawned, or taken over from a replica
    /// that stopped): its dispatcher looks in the store.
    Pending { app: String, function: String },
    /// A call (or a map) ended: its long polls answer, webhooks look.
    Ended(String),
    /// A call was cancelled: its run (or a map's inputs' runs) stops here.
    Cancelled(String),
    /// A spawned map has pending inputs: this replica takes some too.
    MapPending(String),
    /// The deploys changed: serve the stored ones.
    Deployed,
    /// Events may have been missed (the store's connection was lost and is
    /// back): every dispatcher looks, open maps are taken up again, and the
    /// deploys are read again.
    Resync,
}

/// What [`CallStore::take_over`] put back to pending: the functions and
/// maps whose dispatchers should look now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TakenOver {
    pub functions: Vec<(String, String)>,
    pub maps: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("call store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("call store: {0}")]
    Io(String),
    /// A write cannot be made now (disk full, a failed write or sync). The
    /// store keeps serving and takes writes again by itself once it can.
    #[error("call store cannot write now: {0}")]
    Unavailable(String),
    /// Corrupt or unreadable: the store will not recover by itself. Its
    /// [`StoreHealth`] has the fault.
    #[error("call store {0}")]
    Broken(StoreFault),
    /// The store could not be opened or checked at start-up.
    #[error("call store {}: {why}", path.display())]
    Open { path: PathBuf, why: String },
    #[error("the call store has shut down")]
    Closed,
}

impl StoreError {
    /// True for a failure that clears by itself (the caller may retry later).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// How a store failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFault {
    /// The store's file (or address), for the log.
    pub location: String,
    /// What is wrong, without the location: fit for `/_/ready`.
    pub why: String,
}

impl std::fmt::Display for StoreFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.why)
    }
}

/// Whether a store has failed for good: set by the store when it finds
/// out (on any read or write), watched by the gateway, which then answers
/// `/_/ready` with 503, drains and exits non-zero.
#[derive(Debug, Default)]
pub struct StoreHealth {
    fault: OnceLock<StoreFault>,
    failed: CancellationToken,
}

impl StoreHealth {
    /// Records the store's fault; the first one is kept (later ones are
    /// the same failure seen again).
    pub fn fail(&self, fault: StoreFault) {
        if self.fault.set(fault).is_ok() {
            self.failed.cancel();
        }
    }

    pub fn fault(&self) -> Option<&StoreFault> {
        self.fault.get()
    }

    /// Resolves once the store has failed for good.
    pub async fn failed(&self) -> &StoreFault {
        self.failed.cancelled().await;
        self.fault
            .get()
            .expect("the token is cancelled only after the fault is set")
    }
}

/// Durable storage of spawned calls. Every write is durable when its
/// future resolves.
pub trait CallStore: Send + Sync {
    /// Stores a new call, or finds the one its idempotency key made.
    fn insert(&self, call: NewCall) -> BoxFuture<'_, Result<Inserted, StoreError>>;

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<CallRecord>, StoreError>>;

    /// Takes up to `limit` of a function's oldest pending calls, oldest
    /// first, and marks them running, counting the attempt: one durable
    /// write however many it takes, so dispatching keeps up with spawning.
    /// Fewer than `limit` means the function has no pending call left.
    fn claim_batch<'a>(
        &'a self,
        app: &'a str,
        function: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<CallRecord>, StoreError>>;

    /// Takes the oldest pending call of a function and marks it running,
    /// counting the attempt.
    fn claim_next<'a>(
        &'a self,
        app: &'a str,
        function: &'a str,
    ) -> BoxFuture<'a, Result<Option<CallRecord>, StoreError>> {
        Box::pin(async move { Ok(self.claim_batch(app, function, 1).await?.pop()) })
    }

    /// Whether a function has a pending call now. A read: it takes nothing.
    fn has_pending<'a>(
        &'a self,
        app: &'a str,
        function: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// How many calls the store holds pending, as of its last committed
    /// write: the backlog `max_pending` bounds. The store keeps it with its
    /// writes, so a caller that goes away mid-write cannot skew it.
    fn pending(&self) -> u64;

    /// Records how a running call ended (no-op, `false`, when it is no
    /// longer running, e.g. cancelled meanwhile). Queues its webhook.
    fn finish(
        &self,
        id: String,
        outcome: Outcome,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;

    fn cancel(
        &self,
        id: String,
        now_ms: i64,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<Cancelled, StoreError>>;

    /// A running call whose run was lost (its instance or worker vanished)
    /// goes back to pending, to run again with its attempt counted; false
    /// when it is not running (cancelled meanwhile, or unknown).
    fn requeue(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// A running call about to run again after a retry's pause (it stayed
    /// running through it) counts the attempt: `attempt` + 1, started now.
    /// False when it is not running (cancelled meanwhile, or unknown).
    fn retrying(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// At start-up: calls left running by a previous process go back to
    /// pending. Returns how many calls are pending, per function.
    fn recover(&self) -> BoxFuture<'_, Result<PendingCounts, StoreError>>;

    /// Deletes calls whose retention has passed; returns how many.
    fn sweep(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Webhook deliveries due at `now_ms`, and when the next one is due.
    fn due_deliveries(&self, now_ms: i64, limit: usize) -> BoxFuture<'_, Result<Due, StoreError>>;

    /// Records a delivery attempt: `retry_at` `None` ends the delivery.
    fn delivery_attempted(
        &self,
        call_id: String,
        attempts: u32,
        retry_at: Option<i64>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Whether the store has failed for good.
    fn health(&self) -> &StoreHealth;

    /// Stores a spawned map and every input in one write (or finds the map
    /// its idempotency key made). `expires_ms`: when it expires should it
    /// end at once (no input left to run).
    fn insert_map(
        &self,
        call: NewCall,
        inputs: Vec<map::MapInput>,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<Inserted, StoreError>>;

    /// Takes up to `limit` of a running map's pending inputs, lowest index
    /// first, and marks them running, counting the attempt. Fewer than
    /// `limit`: none is left pending (or the map was cancelled).
    fn claim_inputs(
        &self,
        id: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<map::ClaimedInput>, StoreError>>;

    /// Records how a running input ended; the map ends with its last one
    /// (its webhook queued, expiring at `expires_ms`).
    fn finish_input(
        &self,
        id: String,
        index: u64,
        outcome: Outcome,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<map::InputEnded, StoreError>>;

    /// A running input about to run again counts the attempt; false when it
    /// is no longer running.
    fn input_retrying(&self, id: String, index: u64) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// A map's inputs by state.
    fn map_progress(&self, id: String) -> BoxFuture<'_, Result<map::MapProgress, StoreError>>;

    /// Up to `limit` of a map's inputs from index `from` on, in order.
    fn map_page(
        &self,
        id: String,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<map::StoredInput>, StoreError>>;

    /// Maps with open inputs (after `recover`: those a previous process left).
    fn open_maps(&self) -> BoxFuture<'_, Result<Vec<map::OpenMap>, StoreError>>;

    /// How many calls the store holds in each state (for `/_/metrics`;
    /// a state with none may be left out).
    fn count_by_state(&self) -> BoxFuture<'_, Result<Vec<(CallState, u64)>, StoreError>>;

    /// Stores a new version of a deployed table in one durable write;
    /// answers its number, one more than `key`'s latest.
    fn record_deploy(
        &self,
        key: crate::config::OverlayKey,
        table: deploys::DeployedTable,
        created_ms: i64,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Every stored version of `key`, oldest first.
    fn deploy_versions(
        &self,
        key: crate::config::OverlayKey,
    ) -> BoxFuture<'_, Result<Vec<deploys::DeployVersion>, StoreError>>;

    /// The latest version of every deployed key (a delete included).
    fn latest_deploys(&self) -> BoxFuture<'_, Result<Vec<deploys::DeployVersion>, StoreError>>;

    // What a store shared by several gateway replicas adds. The defaults
    // are a store of one gateway's own, whose process is the only one that
    // runs its calls (what it left running goes back to pending in
    // `recover` at its next start).

    /// Events from the replicas sharing this store (this one's own
    /// included); `None` for a store of one gateway.
    fn events(&self) -> Option<tokio::sync::broadcast::Receiver<StoreEvent>> {
        None
    }

    /// How often the replica extends the leases of what it runs
    /// ([`CallStore::heartbeat`]) and takes over lapsed ones
    /// ([`CallStore::take_over`]); `None`: never.
    fn lease_every(&self) -> Option<std::time::Duration> {
        None
    }

    /// Extends the leases of the calls and map inputs (`{map id}-{index}`)
    /// running here, by their ids; ids that hold no lease are ignored.
    fn heartbeat(&self, _running: Vec<String>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Puts the calls and map inputs whose leases lapsed (their replica
    /// stopped) back to pending; they run again, `attempt` + 1.
    fn take_over(&self) -> BoxFuture<'_, Result<TakenOver, StoreError>> {
        Box::pin(std::future::ready(Ok(TakenOver::default())))
    }

    /// The key every replica signs call tokens with, so a call token
    /// minted on one is good on all: 32 random bytes, drawn by the first
    /// replica that asks. `None`: each gateway draws its own.
    fn shared_secret(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
