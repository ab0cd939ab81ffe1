//! What `/_/metrics` reports: counters and histograms recorded on the
//! request path with relaxed atomic adds, encoded in the Prometheus text
//! format at scrape time.
//!
//! Every series a request touches lives in its function's
//! `FunctionMetrics`, which the registry hands each `Function` once when
//! it is built: recording a request takes no lock and looks nothing up.
//! They are kept process-wide by (app, key), so a function rebuilt by a
//! reload or a deploy keeps counting into the same series.

mod histogram;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

pub use histogram::{AtomicHistogram, HistogramSnapshot, LATENCY_BOUNDS};

/// Status codes counted one by one: every code from 100 to 599.
const STATUS_BASE: u16 = 100;
const STATUS_SLOTS: usize = 500;

/// The series of one function (or of the requests no function matched).
#[derive(Debug)]
pub struct FunctionMetrics {
    pub app: Arc<str>,
    /// The function's key: its name, or `class.method` for a method.
    pub function: Arc<str>,
    /// Responses by status code, index `status - 100`.
    statuses: Box<[AtomicU64]>,
    latency: AtomicHistogram,
}

impl FunctionMetrics {
    fn new(app: &str, function: &str) -> FunctionMetrics {
        FunctionMetrics {
            app: app.into(),
            function: function.into(),
            statuses: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            latency: AtomicHistogram::new(),
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
}

/// The process's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Taken only when a function is built (start-up, reload, deploy).
    functions: Mutex<HashMap<(Arc<str>, Arc<str>), Arc<FunctionMetrics>>>,
    unmatched: Arc<FunctionMetrics>,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(|| Metrics {
        functions: Mutex::new(HashMap::new()),
        unmatched: Arc::new(FunctionMetrics::new("-", "-")),
        access_log_dropped: AtomicU64::new(0),
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

    /// Where requests no function matched are counted: `app="-"`,
    /// `function="-"`, never a client's path.
    pub fn unmatched(&self) -> &Arc<FunctionMetrics> {
        &self.unmatched
    }
}

#[cfg(test)]
mod tests;
