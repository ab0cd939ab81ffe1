//! What `/_/metrics` reports: counters and histograms recorded on the
//! request path with relaxed atomic adds, encoded in the Prometheus text
//! format at scrape time (`exposition`).
//!
//! Every series a request touches lives in its function's
//! `FunctionMetrics`, which the registry hands each `Function` once when
//! it is built: recording a request takes no lock and looks nothing up.
//! They are kept process-wide by (app, key), so a function rebuilt by a
//! reload or a deploy keeps counting into the same series.

pub mod access_log;
mod exposition;
mod histogram;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

pub use exposition::{CONTENT_TYPE, FunctionGauges, Scrape, encode};
pub use histogram::{AtomicHistogram, HistogramSnapshot, LATENCY_BOUNDS};

use crate::backend::BackendError;

/// Status codes counted one by one: every code from 100 to 599.
const STATUS_BASE: u16 = 100;
const STATUS_SLOTS: usize = 500;

/// The gateway's own routes, each counted under `app="-"` and its label
/// as `function` (their labels are fixed: never a client's path).
pub const FIXED_ROUTES: [&str; 7] = [
    "/_/health",
    "/_/ready",
    "/_/metrics",
    "/_/openapi.json",
    "/_/docs",
    "/calls/{id}",
    "/_/work/{app}/{function}",
];

/// The kinds of backend errors, as `kind` labels.
pub const BACKEND_ERROR_KINDS: [&str; 6] = [
    "function_error",
    "unreachable",
    "crashed",
    "garbage",
    "init_failed",
    "timeout",
];

/// The label of a backend error's kind.
fn backend_error_kind(error: &BackendError) -> usize {
    match error {
        BackendError::Function { .. } => 0,
        BackendError::Unreachable(_) => 1,
        BackendError::Crashed(_) => 2,
        BackendError::Garbage(_) => 3,
        BackendError::InitFailed { .. } => 4,
        BackendError::Timeout => 5,
    }
}

/// The series of one function (or of one of the gateway's own routes, or
/// of the requests no route matched).
#[derive(Debug)]
pub struct FunctionMetrics {
    pub app: Arc<str>,
    /// The function's key: its name, or `class.method` for a method.
    pub function: Arc<str>,
    /// Its route as the access log shows it: `/{app}/{function}` or
    /// `/{app}/{class}/{method}`.
    pub route: Box<str>,
    /// Responses by status code, index `status - 100`.
    statuses: Box<[AtomicU64]>,
    latency: AtomicHistogram,
    backend_errors: [AtomicU64; BACKEND_ERROR_KINDS.len()],
}

impl FunctionMetrics {
    fn new(app: &str, function: &str) -> FunctionMetrics {
        let route = format!("/{app}/{}", function.replace('.', "/"));
        FunctionMetrics::with_route(app, function, &route)
    }

    fn with_route(app: &str, function: &str, route: &str) -> FunctionMetrics {
        FunctionMetrics {
            app: app.into(),
            function: function.into(),
            route: route.into(),
            statuses: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            latency: AtomicHistogram::new(),
            backend_errors: Default::default(),
        }
    }

    /// Counts one answered request: its status and how long it took.
    pub fn record_request(&self, status: u16, took: Duration) {
        if let Some(slot) = status
            .checked_sub(STATUS_BASE)
            .and_then(|i| self.statuses.get(usize::from(i)))
        {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.observe(took);
    }

    /// Counts a call of this function that failed in its backend (sync
    /// or spawned).
    pub fn record_backend_error(&self, error: &BackendError) {
        self.backend_errors[backend_error_kind(error)].fetch_add(1, Ordering::Relaxed);
    }

    /// Request latency (every status) since the gateway started.
    pub fn latency(&self) -> HistogramSnapshot {
        self.latency.snapshot()
    }

    /// Requests answered since the gateway started.
    pub fn requests_total(&self) -> u64 {
        self.statuses
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// The status codes answered at least once, with their counts.
    pub fn statuses(&self) -> Vec<(u16, u64)> {
        (self.statuses.iter().enumerate())
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                let code = STATUS_BASE + u16::try_from(i).ok()?;
                (n > 0).then_some((code, n))
            })
            .collect()
    }

    /// Backend errors by kind (those that happened at least once).
    pub fn backend_errors(&self) -> Vec<(&'static str, u64)> {
        (BACKEND_ERROR_KINDS.iter().zip(&self.backend_errors))
            .map(|(kind, n)| (*kind, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Instances of one pool at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InstanceStates {
    pub starting: u64,
    pub idle: u64,
    pub busy: u64,
}

/// What an instance pool tells the scrape about itself.
pub trait PoolState: Send + Sync {
    fn instance_states(&self) -> InstanceStates;
}

/// The instance series of a function's (or a class's) pools.
pub struct PoolMetrics {
    pub app: Arc<str>,
    /// The function's name, or the class's for a class's instances.
    pub function: Arc<str>,
    cold_starts: AtomicU64,
    cold_start_seconds: AtomicHistogram,
    /// Its pools (one per parameter set), read at scrape time.
    pools: Mutex<Vec<Weak<dyn PoolState>>>,
}

impl std::fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMetrics")
            .field("app", &self.app)
            .field("function", &self.function)
            .finish_non_exhaustive()
    }
}

impl PoolMetrics {
    /// Counts an instance that became ready `took` after it was started.
    pub fn record_cold_start(&self, took: Duration) {
        self.cold_starts.fetch_add(1, Ordering::Relaxed);
        self.cold_start_seconds.observe(took);
    }

    /// Adds a pool whose instances count here while it lives.
    pub fn add_pool(&self, pool: Weak<dyn PoolState>) {
        let mut pools = self.pools.lock().expect("no code panics holding this lock");
        pools.retain(|pool| pool.strong_count() > 0);
        pools.push(pool);
    }

    /// Instances by state, over every live pool.
    pub fn instance_states(&self) -> InstanceStates {
        let pools: Vec<Arc<dyn PoolState>> = {
            let pools = self.pools.lock().expect("no code panics holding this lock");
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        pools.iter().map(|pool| pool.instance_states()).fold(
            InstanceStates::default(),
            |sum, one| InstanceStates {
                starting: sum.starting + one.starting,
                idle: sum.idle + one.idle,
                busy: sum.busy + one.busy,
            },
        )
    }

    pub fn cold_starts(&self) -> u64 {
        self.cold_starts.load(Ordering::Relaxed)
    }

    pub fn cold_start_seconds(&self) -> HistogramSnapshot {
        self.cold_start_seconds.snapshot()
    }
}

/// Outcomes of webhook delivery attempts, as `outcome` labels.
pub const WEBHOOK_OUTCOMES: [&str; 3] = ["delivered", "failed", "gave_up"];

/// How one webhook delivery attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum WebhookOutcome {
    /// The receiver answered 2xx.
    Delivered = 0,
    /// It did not; the delivery is tried again later.
    Failed = 1,
    /// It did not, and that was the last attempt.
    GaveUp = 2,
}

/// Why a TLS handshake failed, as `reason` labels.
pub const TLS_FAILURES: [&str; 2] = ["timeout", "error"];

/// Series by (app, name).
type ByName<T> = HashMap<(Arc<str>, Arc<str>), Arc<T>>;

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Taken only when a function is built (start-up, reload, deploy) and
    /// at scrape time.
    functions: Mutex<ByName<FunctionMetrics>>,
    pools: Mutex<ByName<PoolMetrics>>,
    unmatched: Arc<FunctionMetrics>,
    fixed: Vec<Arc<FunctionMetrics>>,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_failures: [AtomicU64; TLS_FAILURES.len()],
    webhook_deliveries: [AtomicU64; WEBHOOK_OUTCOMES.len()],
    store_commits: AtomicHistogram,
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(|| Metrics {
        functions: Mutex::new(HashMap::new()),
        pools: Mutex::new(HashMap::new()),
        unmatched: Arc::new(FunctionMetrics::with_route("-", "-", "-")),
        fixed: (FIXED_ROUTES.iter())
            .map(|route| Arc::new(FunctionMetrics::with_route("-", route, route)))
            .collect(),
        access_log_dropped: AtomicU64::new(0),
        tls_handshakes: AtomicU64::new(0),
        tls_failures: Default::default(),
        webhook_deliveries: Default::default(),
        store_commits: AtomicHistogram::new(),
    })
}

impl Metrics {
    /// The series of function `key` of `app`: the same `Arc` for every
    /// version of the function this process builds.
    pub fn function(&self, app: &str, key: &str) -> Arc<FunctionMetrics> {
        let mut functions = self
            .functions
            .lock()
            .expect("no code panics while holding the metrics map");
        functions
            .entry((app.into(), key.into()))
            .or_insert_with(|| Arc::new(FunctionMetrics::new(app, key)))
            .clone()
    }

    /// The instance series of the pools labelled `app/name` (a function's
    /// or a class's; anything after a `?` names a parameter set and is
    /// not part of the label).
    pub fn pool(&self, label: &str) -> Arc<PoolMetrics> {
        let label = label.split('?').next().unwrap_or_default();
        let (app, name) = label.split_once('/').unwrap_or(("-", label));
        let mut pools = self
            .pools
            .lock()
            .expect("no code panics while holding the metrics map");
        pools
            .entry((app.into(), name.into()))
            .or_insert_with(|| {
                Arc::new(PoolMetrics {
                    app: app.into(),
                    function: name.into(),
                    cold_starts: AtomicU64::new(0),
                    cold_start_seconds: AtomicHistogram::new(),
                    pools: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// Where requests no route matched are counted: `app="-"`,
    /// `function="-"`, never a client's path.
    pub fn unmatched(&self) -> &Arc<FunctionMetrics> {
        &self.unmatched
    }

    /// Where requests to one of the gateway's own routes are counted;
    /// a label not in [`FIXED_ROUTES`] counts as unmatched.
    pub fn fixed(&self, label: &str) -> &Arc<FunctionMetrics> {
        FIXED_ROUTES
            .iter()
            .position(|route| *route == label)
            .map_or(&self.unmatched, |i| &self.fixed[i])
    }

    /// Counts a TLS handshake that completed.
    pub fn record_handshake(&self) {
        self.tls_handshakes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a TLS handshake that failed (`timed_out`: the client was too
    /// slow; otherwise it sent something TLS refuses).
    pub fn record_handshake_failure(&self, timed_out: bool) {
        let reason = if timed_out { 0 } else { 1 };
        self.tls_failures[reason].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_webhook(&self, outcome: WebhookOutcome) {
        self.webhook_deliveries[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one commit of the embedded store, which took `took`.
    pub fn record_store_commit(&self, took: Duration) {
        self.store_commits.observe(took);
    }

    fn all_functions(&self) -> Vec<Arc<FunctionMetrics>> {
        let functions = self
            .functions
            .lock()
            .expect("no code panics while holding the metrics map");
        let mut all: Vec<_> = functions.values().cloned().collect();
        all.sort_by(|a, b| (&a.app, &a.function).cmp(&(&b.app, &b.function)));
        all.extend(self.fixed.iter().cloned());
        all.push(self.unmatched.clone());
        all
    }

    fn all_pools(&self) -> Vec<Arc<PoolMetrics>> {
        let pools = self
            .pools
            .lock()
            .expect("no code panics while holding the metrics map");
        let mut all: Vec<_> = pools.values().cloned().collect();
        all.sort_by(|a, b| (&a.app, &a.function).cmp(&(&b.app, &b.function)));
        all
    }
}

#[cfg(test)]
mod tests;
