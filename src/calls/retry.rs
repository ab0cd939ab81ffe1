//! Retries: whether a run that ended runs again and after how long (the
//! rule spawned calls and map inputs share), the pause before the next
//! run, which a cancel or the gateway's shutdown cuts short, and counting
//! the next attempt in the store.
//!
//! A spawned call stays `running` in the store through the pause: the
//! pause lives in memory only. A gateway that stops during it leaves the
//! call running in the store; the next start puts it back to pending and
//! it runs again at once, its attempt counted by the claim.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RetryPolicy;
use crate::dispatch::Slot;
use crate::registry::Function;
use crate::store::{CallRecord, Outcome, StoreError, now_ms};

use super::Calls;

/// Whether a run that ended with `outcome` may run again at all: a
/// failure (the function's error, or its backend's) or a timeout. A
/// success, and a passthrough call's answer whatever its status, is final.
pub fn is_retryable(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Failed { .. } | Outcome::TimedOut => true,
        Outcome::Succeeded(_) | Outcome::Answered { .. } => false,
    }
}

/// The pause before another run, after run `attempt` (from 1) ended with
/// `outcome` under `policy`; `None` when `outcome` is final: a success,
/// no policy, or no run left.
pub fn retry_delay(
    policy: Option<&RetryPolicy>,
    attempt: u32,
    outcome: &Outcome,
) -> Option<Duration> {
    if !is_retryable(outcome) {
        return None;
    }
    policy?.delay_after(attempt)
}

/// How a pause before another run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The delay passed: the next run may start.
    Elapsed,
    /// `stop` fired first (a cancel, a client gone): no run follows.
    Stopped,
    /// `shutdown` fired first: the run is left for the next start.
    ShuttingDown,
}

/// Waits `delay` unless `stop` or `shutdown` fires first.
pub async fn pause(
    delay: Duration,
    stop: &CancellationToken,
    shutdown: &CancellationToken,
) -> Pause {
    tokio::select! {
        biased;
        () = stop.cancelled() => Pause::Stopped,
        () = shutdown.cancelled() => Pause::ShuttingDown,
        () = tokio::time::sleep(delay) => Pause::Elapsed,
    }
}

/// What follows a spawned call's run.
pub(super) enum Rerun {
    /// It runs again now, in this slot, its attempt counted.
    Now(Slot),
    /// The run's outcome is the call's outcome: record it.
    No,
    /// Cancelled during the pause, or the gateway is stopping: nothing to
    /// record here (a cancel has recorded the end; a stop leaves the call
    /// for the next start).
    Stopped,
}

impl Calls {
    /// After a run of `record` that ended with `outcome`: the function's
    /// retry policy says whether it runs again. If so, this pauses, takes a
    /// slot as a spawned call does, and counts the attempt in the store
    /// (and in `record`). Calls adopted from sync callers are not retried.
    pub(super) async fn rerun(
        &self,
        function: &Function,
        record: &mut CallRecord,
        outcome: &Outcome,
        stop: &CancellationToken,
    ) -> Rerun {
        if record.from_sync {
            return Rerun::No;
        }
        let Some(delay) = retry_delay(function.spec.retries.as_ref(), record.attempt, outcome)
        else {
            return Rerun::No;
        };
        tracing::info!(call_id = %record.id, attempt = record.attempt, delay_ms = delay.as_millis() as u64, "the call failed; it runs again after its backoff");
        match pause(delay, stop, &self.stopping).await {
            Pause::Elapsed => {}
            Pause::Stopped => return Rerun::Stopped,
            Pause::ShuttingDown => {
                tracing::info!(call_id = %record.id, "shutting down during a retry's pause; the call runs again after restart");
                return Rerun::Stopped;
            }
        }
        let slot = tokio::select! {
            slot = function.limiter.acquire_background() => slot,
            () = stop.cancelled() => return Rerun::Stopped,
            () = self.stopping.cancelled() => return Rerun::Stopped,
        };
        if !self.count_attempt(&record.id, stop).await {
            return Rerun::Stopped;
        }
        record.attempt += 1;
        record.started_ms = Some(now_ms());
        Rerun::Now(slot)
    }

    /// Counts the next attempt of a running call in the store, retrying a
    /// store that cannot write now. False when the call is no longer
    /// running (cancelled meanwhile), when `stop` fires, or when the store
    /// is gone (the call then runs again after a restart).
    async fn count_attempt(&self, id: &str, stop: &CancellationToken) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.store.retrying(id.to_owned()).await {
                Ok(running) => return running,
                Err(StoreError::Closed | StoreError::Broken(_)) => return false,
                Err(e) => {
                    tracing::error!(call_id = id, error = %e, "cannot count a retried call's attempt; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => return false,
                        () = self.stopping.cancelled() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
