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
        tracing::info!(call_id = %record.id, attempt = record.attempt, delay_ms = delay.as_millis() as u64, "the call's run failed or timed out; it runs again after its backoff");
        let next = self.pause_and_count(function, record, delay, stop).await;
        if let Rerun::Stopped = next {
            // A cancel has forgotten it already; a stopping store or
            // gateway has not.
            self.running.forget(&record.id);
        }
        next
    }

    /// The pause before the next run of `record`, then a slot for it and
    /// its attempt counted.
    async fn pause_and_count(
        &self,
        function: &Function,
        record: &mut CallRecord,
        delay: Duration,
        stop: &CancellationToken,
    ) -> Rerun {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::FutureExt;

    use super::*;
    use crate::calls::{SpawnInput, SpawnOptions};
    use crate::store::{CallState, FailureKind};
    use crate::translate::Arguments;

    fn failed() -> Outcome {
        Outcome::Failed {
            kind: FailureKind::Function,
            error_type: "ValueError".to_owned(),
            message: "no".to_owned(),
        }
    }

    /// `Calls` of one exec function `t/flaky` that retries twice, 10 s
    /// then 20 s after a failure, with its store in `dir`.
    fn calls(dir: &std::path::Path) -> (Arc<Calls>, Arc<Function>) {
        let text = r#"
            [apps.t.functions.flaky]
            backend = "exec"
            command = ["sh", "-c", "cat > /dev/null; exit 1"]
            retries = { max_retries = 2, initial_delay = "10s", backoff_coefficient = 2.0 }
        "#;
        crate::calls::tests::calls_of(dir, text, "flaky")
    }

    /// A call of `function`, stored and claimed: running, attempt 1.
    async fn claimed(calls: &Calls, function: &Function) -> CallRecord {
        let input = SpawnInput::Arguments(Arguments::none());
        calls
            .spawn(function, input, SpawnOptions::default())
            .await
            .unwrap();
        let record = calls.store.claim_next("t", "flaky").await.unwrap();
        let record = record.expect("the call is pending");
        assert_eq!((record.state, record.attempt), (CallState::Running, 1));
        record
    }

    /// Runs `rerun` after `record`'s failed run in a task of its own.
    fn rerun_in_task(
        calls: &Arc<Calls>,
        function: &Arc<Function>,
        mut record: CallRecord,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<(Rerun, CallRecord)> {
        let (calls, function, stop) = (calls.clone(), function.clone(), stop.clone());
        tokio::spawn(async move {
            let rerun = calls.rerun(&function, &mut record, &failed(), &stop).await;
            (rerun, record)
        })
    }

    /// Lets the other tasks run without moving the paused clock.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn failures_and_timeouts_are_retried_while_runs_are_left() {
        let policy = RetryPolicy::fixed(2);
        let second = Some(Duration::from_secs(1));
        assert_eq!(retry_delay(Some(&policy), 1, &failed()), second);
        assert_eq!(retry_delay(Some(&policy), 2, &Outcome::TimedOut), second);
        assert_eq!(retry_delay(Some(&policy), 3, &failed()), None);
        assert_eq!(retry_delay(None, 1, &failed()), None);
        let backend = Outcome::Failed {
            kind: FailureKind::Backend,
            error_type: "backend_error".to_owned(),
            message: String::new(),
        };
        assert_eq!(retry_delay(Some(&policy), 1, &backend), second);
    }

    #[test]
    fn successes_and_passthrough_answers_are_final() {
        let policy = RetryPolicy::fixed(2);
        let success = Outcome::Succeeded(b"1".to_vec());
        assert_eq!(retry_delay(Some(&policy), 1, &success), None);
        let answered = Outcome::Answered {
            status: 503,
            content_type: None,
            body: Vec::new(),
        };
        assert_eq!(retry_delay(Some(&policy), 1, &answered), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_lasts_its_delay_and_no_less() {
        let (stop, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let delay = Duration::from_secs(4);
        let waiting = tokio::spawn(async move { pause(delay, &stop, &shutdown).await });
        tokio::time::advance(delay - Duration::from_millis(1)).await;
        settle().await;
        assert!(!waiting.is_finished(), "the pause ended early");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(waiting.await.unwrap(), Pause::Elapsed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_or_shutdown_ends_a_pause_at_once() {
        let (stop, shutdown) = (CancellationToken::new(), CancellationToken::new());
        let start = tokio::time::Instant::now();
        let long = Duration::from_secs(60);
        let (s, d) = (stop.clone(), shutdown.clone());
        let waiting = tokio::spawn(async move { pause(long, &s, &d).await });
        settle().await;
        stop.cancel();
        assert_eq!(waiting.await.unwrap(), Pause::Stopped);
        let stop = CancellationToken::new();
        shutdown.cancel();
        assert_eq!(pause(long, &stop, &shutdown).await, Pause::ShuttingDown);
        assert_eq!(tokio::time::Instant::now(), start, "no time passed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_runs_again_after_its_backoff_with_its_attempt_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (calls, function) = calls(dir.path());
        let record = claimed(&calls, &function).await;
        let id = record.id.clone();
        let stop = CancellationToken::new();
        let attempt = |calls: &Calls| {
            let record = calls.store.get(&id).now_or_never().unwrap().unwrap();
            let record = record.expect("the call is stored");
            (record.state, record.attempt)
        };
        // First retry: 10 s after run 1.
        let rerun = rerun_in_task(&calls, &function, record, &stop);
        settle().await;
        tokio::time::advance(Duration::from_millis(9_999)).await;
        settle().await;
        assert!(!rerun.is_finished(), "run 2 started before the backoff");
        assert_eq!(attempt(&calls), (CallState::Running, 1));
        tokio::time::advance(Duration::from_millis(1)).await;
        let (next, record) = rerun.await.unwrap();
        assert!(matches!(next, Rerun::Now(_)), "run 2 follows");
        assert_eq!(record.attempt, 2);
        assert_eq!(attempt(&calls), (CallState::Running, 2));
        drop(next);
        // Second retry: 20 s after run 2 (backoff coefficient 2).
        let rerun = rerun_in_task(&calls, &function, record, &stop);
        settle().await;
        tokio::time::advance(Duration::from_millis(19_999)).await;
        settle().await;
        assert!(!rerun.is_finished(), "run 3 started before the backoff");
        tokio::time::advance(Duration::from_millis(1)).await;
        let (next, record) = rerun.await.unwrap();
        assert!(matches!(next, Rerun::Now(_)), "run 3 follows");
        drop(next);
        assert_eq!(attempt(&calls), (CallState::Running, 3));
        // Two retries used: run 3's failure is the outcome, with no pause.
        let start = tokio::time::Instant::now();
        let (next, _) = rerun_in_task(&calls, &function, record, &stop)
            .await
            .unwrap();
        assert!(matches!(next, Rerun::No), "no run 4");
        assert_eq!(tokio::time::Instant::now(), start);
        assert_eq!(attempt(&calls), (CallState::Running, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_during_the_pause_stops_further_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (calls, function) = calls(dir.path());
        let record = claimed(&calls, &function).await;
        let id = record.id.clone();
        let stop = CancellationToken::new();
        let registry = calls.registry.current();
        calls
            .running
            .track(id.clone(), stop.clone(), &registry, "t", "flaky");
        let rerun = rerun_in_task(&calls, &function, record, &stop);
        settle().await;
        tokio::time::advance(Duration::from_secs(5)).await;
        settle().await;
        let cancelled = calls.cancel(&id).await.unwrap();
        assert_eq!(cancelled, crate::store::Cancelled::Now(CallState::Running));
        let (next, record) = rerun.await.unwrap();
        assert!(matches!(next, Rerun::Stopped), "no run 2");
        assert_eq!(record.attempt, 1);
        let stored = calls.store.get(&id).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.attempt), (CallState::Cancelled, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_pause_at_once_and_counts_no_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let (calls, function) = calls(dir.path());
        let record = claimed(&calls, &function).await;
        let id = record.id.clone();
        let stop = CancellationToken::new();
        let rerun = rerun_in_task(&calls, &function, record, &stop);
        settle().await;
        let at = tokio::time::Instant::now();
        // What a cancel does to the call running here, after the store.
        stop.cancel();
        let (next, record) = rerun.await.unwrap();
        assert!(matches!(next, Rerun::Stopped), "no run 2");
        assert_eq!(tokio::time::Instant::now(), at, "the pause ended at once");
        assert_eq!(record.attempt, 1);
        let stored = calls.store.get(&id).await.unwrap().unwrap();
        assert_eq!((stored.state, stored.attempt), (CallState::Running, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_cancelled_before_its_attempt_is_counted_does_not_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let (calls, function) = calls(dir.path());
        let record = claimed(&calls, &function).await;
        // Cancelled in the store only (as by another replica): the pause
        // ends, and counting the attempt finds the call no longer running.
        let cancelled = calls.store.cancel(record.id.clone(), 0, i64::MAX).await;
        assert!(matches!(cancelled, Ok(crate::store::Cancelled::Now(_))));
        let stop = CancellationToken::new();
        let (next, record) = rerun_in_task(&calls, &function, record, &stop)
            .await
            .unwrap();
        assert!(matches!(next, Rerun::Stopped));
        assert_eq!(record.attempt, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_call_adopted_as_spawned_is_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let (calls, function) = calls(dir.path());
        let mut record = claimed(&calls, &function).await;
        record.from_sync = true;
        let stop = CancellationToken::new();
        let (next, _) = rerun_in_task(&calls, &function, record, &stop)
            .await
            .unwrap();
        assert!(matches!(next, Rerun::No));
    }
}
