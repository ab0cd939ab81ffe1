//! A latency histogram recorded with relaxed atomic adds.
//!
//! prometheus-client's own `Histogram` takes a lock on every observation;
//! request latency is recorded on every request by every worker, so it
//! lives here as fixed buckets of `AtomicU64` counts and a sum in
//! microseconds, and is read (a snapshot) only at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (the last bucket, `+Inf`, is
/// implied): from half a millisecond to the 150 s sync wait.
pub const LATENCY_BOUNDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    150.0,
];

const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// The same bounds in microseconds, to pick a bucket without floats.
const BOUNDS_MICROS: [u64; LATENCY_BOUNDS.len()] = {
    let mut micros = [0u64; LATENCY_BOUNDS.len()];
    let mut i = 0;
    while i < LATENCY_BOUNDS.len() {
        micros[i] = (LATENCY_BOUNDS[i] * 1_000_000.0) as u64;
        i += 1;
    }
    micros
};

/// Durations counted in fixed buckets (`LATENCY_BOUNDS`).
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    pub fn new() -> AtomicHistogram {
        AtomicHistogram::default()
    }

    /// Counts one duration: two relaxed adds, no lock.
    pub fn observe(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BUCKETS - 1);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The counts as they are now. (Each count is read on its own, so a
    /// snapshot taken while requests end may be one observation apart
    /// between buckets and sum; scrapes tolerate that.)
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            bounds: LATENCY_BOUNDS.to_vec(),
            count: counts.iter().sum(),
            counts,
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1_000_000.0,
        }
    }
}

/// A histogram's counts at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds of the finite buckets, in seconds.
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); one more than `bounds`,
    /// the last one being `+Inf`.
    pub counts: Vec<u64>,
    /// Every observation.
    pub count: u64,
    pub sum_seconds: f64,
}

impl HistogramSnapshot {
    /// The `q` quantile (0..=1) in seconds, linear within its bucket (as
    /// Prometheus' `histogram_quantile`); one in the `+Inf` bucket is the
    /// largest finite bound. `None` with no observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = q * self.count as f64;
        let mut below = 0u64;
        for (i, &count) in self.counts.iter().enumerate() {
            if count == 0 || ((below + count) as f64) < rank {
                below += count;
                continue;
            }
            let Some(&upper) = self.bounds.get(i) else {
                return self.bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
            let within = (rank - below as f64) / count as f64;
            return Some(lower + (upper - lower) * within);
        }
        self.bounds.last().copied()
    }

    /// Counts since `earlier` (a snapshot of the same histogram taken
    /// before): what happened in between, e.g. over the last minutes.
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
            .map(|(now, then)| now.saturating_sub(*then))
            .collect();
        HistogramSnapshot {
            bounds: self.bounds.clone(),
            count: counts.iter().sum(),
            counts,
            sum_seconds: (self.sum_seconds - earlier.sum_seconds).max(0.0),
        }
    }
}
