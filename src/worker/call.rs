//! One call's way through the worker, whatever the instance speaks: polled
//! from the gateway, run while a heartbeat every second tells the gateway
//! it is still running here, stopped when the gateway gives it up or its
//! timeout passes, and ended by posting its result or error.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::WorkerError;
use super::backoff::Backoff;
use super::client::{Beat, End, Failure, GatewayClient};
use super::wire::Call;
use crate::backend::BackendError;

/// How often a running call is heartbeated.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long past its timeout a call may run here. The gateway's timer
/// started before the call was handed over, so by then it has fired and
/// the call is over there; the instance is stopped here too.
const OVERRUN: Duration = Duration::from_secs(1);

/// How long the end of a call is posted again while the gateway cannot
/// take it.
const END_PATIENCE: Duration = Duration::from_secs(30);

/// How a call ended on the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The result JSON.
    Result(Bytes),
    /// The function's error, or what stopped the instance from answering.
    Error { kind: String, message: String },
}

impl Outcome {
    /// An instance's answer. Errors that are not the function's own get a
    /// `Runtime.*` type: the protocol has only results and errors.
    pub(super) fn of(answer: Result<Bytes, BackendError>) -> Outcome {
        let (kind, message) = match answer {
            Ok(result) => return Outcome::Result(result),
            Err(BackendError::Function { kind, message }) => (kind, message),
            Err(BackendError::Garbage(why)) => ("Runtime.InvalidResponse".to_owned(), why),
            Err(BackendError::Crashed(why)) => ("Runtime.ExitError".to_owned(), why),
            Err(BackendError::Unreachable(why)) => ("Runtime.Unavailable".to_owned(), why),
            Err(BackendError::InitFailed { kind, message }) => {
                (kind, format!("the instance's init failed: {message}"))
            }
            Err(BackendError::Timeout) => (
                "Sandbox.Timedout".to_owned(),
                "the call timed out".to_owned(),
            ),
        };
        Outcome::Error { kind, message }
    }

    /// The instance died during the call (`status` says how).
    pub(super) fn exited(status: &str) -> Outcome {
        Outcome::Error {
            kind: "Runtime.ExitError".to_owned(),
            message: format!("the instance exited: {status}"),
        }
    }

    fn timed_out(timeout: Duration) -> Outcome {
        Outcome::Error {
            kind: "Sandbox.Timedout".to_owned(),
            message: format!(
                "the call ran past its timeout ({}) on the worker",
                humantime::format_duration(timeout)
            ),
        }
    }

    pub(super) fn is_result(&self) -> bool {
        matches!(self, Outcome::Result(_))
    }

    fn end(&self) -> End<'_> {
        match self {
            Outcome::Result(result) => End::Result(result),
            Outcome::Error { kind, message } => End::Error { kind, message },
        }
    }
}

/// Polls until a call comes; `None` once `shutdown` fires. A 204 polls
/// again at once, a 5xx or a network error after a backoff; a fatal
/// refusal (401, 403, 404, 409) is the error.
pub(super) async fn next(
    client: &GatewayClient,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<Call>, WorkerError> {
    let mut backoff = Backoff::requests();
    let mut failures = 0u32;
    loop {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let polled = tokio::select! {
            polled = client.next(timeout) => polled,
            () = shutdown.cancelled() => return Ok(None),
        };
        let failure = match polled {
            Ok(call) => {
                if failures > 0 {
                    tracing::info!("the gateway answers polls again");
                }
                failures = 0;
                backoff.reset();
                match call {
                    Some(call) => return Ok(Some(call)),
                    None => continue,
                }
            }
            Err(failure) if failure.is_fatal() => return Err(failure.into()),
            Err(failure) => failure,
        };
        let pause = backoff.failed();
        failures += 1;
        // The first failure in a row is told, then every tenth.
        if failures % 10 == 1 {
            tracing::warn!(
                "a poll for calls failed ({failures} in a row): {failure}; polling again in {}",
                humantime::format_duration(pause)
            );
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
    }
}

/// How running a call on the instance went.
pub(super) enum Ran {
    /// The instance answered, or died: the outcome says which.
    Done(Outcome),
    /// Its timeout passed: the work was dropped (the instance must be
    /// stopped, for a lambda one), and this outcome is to be posted.
    TimedOut(Outcome),
    /// Cancelled, or no longer this worker's (heartbeat 404 or 410): the
    /// work was dropped, nothing is posted.
    Lost,
    /// The worker is stopping and the call did not end within the drain:
    /// dropped, nothing posted; the gateway sees the worker vanish (a
    /// spawned call runs again elsewhere, a sync call is 502).
    Abandoned,
}

/// A call given to this worker: heartbeated from its start until the
/// assignment is dropped.
pub(super) struct Assignment {
    client: Arc<GatewayClient>,
    id: String,
    timeout: Duration,
    /// The local end of its time: its timeout from when it came, plus the
    /// overrun.
    deadline: Instant,
    /// Cancelled by the heartbeat when the gateway gave the call up.
    lost: CancellationToken,
    _heartbeat: AbortOnDropHandle<()>,
}

impl Assignment {
    /// Starts heartbeating `call`, which may run for `timeout`.
    pub(super) fn start(client: Arc<GatewayClient>, call: &Call, timeout: Duration) -> Assignment {
        let lost = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(client.clone(), call.id.clone(), lost.clone()));
        Assignment {
            client,
            id: call.id.clone(),
            timeout,
            deadline: Instant::now() + timeout + OVERRUN,
            lost,
            _heartbeat: AbortOnDropHandle::new(heartbeat),
        }
    }

    /// Runs `work` (the call on the instance) until it ends, the gateway
    /// gives the call up, its timeout passes or `abandon` fires; `work` is
    /// dropped before this returns.
    pub(super) async fn run(
        &self,
        work: impl Future<Output = Outcome>,
        abandon: &CancellationToken,
    ) -> Ran {
        let ran = tokio::select! {
            biased;
            outcome = work => Ran::Done(outcome),
            () = self.lost.cancelled() => Ran::Lost,
            () = tokio::time::sleep_until(self.deadline) => {
                Ran::TimedOut(Outcome::timed_out(self.timeout))
            }
            () = abandon.cancelled() => Ran::Abandoned,
        };
        let id = &self.id;
        match &ran {
            Ran::Done(_) => {}
            Ran::TimedOut(_) => tracing::warn!(
                call_id = %id,
                "the call ran past its timeout ({}): stopped",
                humantime::format_duration(self.timeout)
            ),
            Ran::Lost => tracing::info!(
                call_id = %id,
                "the gateway gave the call up (cancelled, or no longer this worker's): stopped"
            ),
            Ran::Abandoned => tracing::warn!(
                call_id = %id,
                "the call did not end within the drain: dropped (the gateway runs a spawned call again elsewhere, a sync call is 502)"
            ),
        }
        ran
    }

    /// Posts the call's end, heartbeating meanwhile; again after a backoff
    /// while the gateway cannot take it (up to 30 s). A refusal (e.g. the
    /// call timed out meanwhile) is logged and the end dropped.
    pub(super) async fn finish(self, outcome: &Outcome) {
        let id = &self.id;
        let end = outcome.end();
        let give_up = Instant::now() + END_PATIENCE;
        let mut backoff = Backoff::requests();
        loop {
            let posted = tokio::select! {
                posted = self.client.end(id, &end) => posted,
                () = self.lost.cancelled() => {
                    tracing::info!(call_id = %id, "the gateway gave the call up before its end was posted");
                    return;
                }
            };
            let failure = match posted {
                Ok(()) => {
                    tracing::debug!(call_id = %id, result = outcome.is_result(), "call ended");
                    return;
                }
                Err(failure @ Failure::Refused { .. }) => {
                    tracing::warn!(call_id = %id, "the gateway refused the call's end: {failure}");
                    return;
                }
                Err(failure) => failure,
            };
            let pause = backoff.failed();
            if Instant::now() + pause >= give_up {
                tracing::error!(
                    call_id = %id,
                    "cannot post the call's end; gave up after {}: {failure}",
                    humantime::format_duration(END_PATIENCE)
                );
                return;
            }
            tracing::warn!(call_id = %id, "posting the call's end failed: {failure}; again in {}", humantime::format_duration(pause));
            tokio::time::sleep(pause).await;
        }
    }
}

/// Heartbeats call `id` every second until the gateway answers 404 or 410
/// (then cancels `lost`); failures to reach it are told once in a row.
async fn heartbeat(client: Arc<GatewayClient>, id: String, lost: CancellationToken) {
    let mut tick = tokio::time::interval_at(Instant::now() + HEARTBEAT_EVERY, HEARTBEAT_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match client.heartbeat(&id).await {
            Ok(Beat::Alive) => {
                if failing {
                    tracing::info!(call_id = %id, "heartbeats are answered again");
                }
                failing = false;
            }
            Ok(Beat::Gone) => {
                lost.cancel();
                return;
            }
            Err(failure) => {
                if !failing {
                    tracing::warn!(call_id = %id, "a heartbeat failed: {failure}");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_answer_becomes_a_result_or_a_typed_error() {
        assert_eq!(
            Outcome::of(Ok(Bytes::from_static(b"42"))),
            Outcome::Result(Bytes::from_static(b"42"))
        );
        let error = |kind: &str, message: &str| Outcome::Error {
            kind: kind.to_owned(),
            message: message.to_owned(),
        };
        assert_eq!(
            Outcome::of(Err(BackendError::Function {
                kind: "ValueError".to_owned(),
                message: "x must be positive".to_owned()
            })),
            error("ValueError", "x must be positive")
        );
        assert_eq!(
            Outcome::of(Err(BackendError::Garbage("result is not JSON".to_owned()))),
            error("Runtime.InvalidResponse", "result is not JSON")
        );
        assert_eq!(
            Outcome::exited("signal: 9 (SIGKILL)"),
            error(
                "Runtime.ExitError",
                "the instance exited: signal: 9 (SIGKILL)"
            )
        );
    }

    #[test]
    fn an_end_is_posted_as_a_result_or_an_error_report() {
        let result = Outcome::Result(Bytes::from_static(b"{\"x\":1}"));
        assert!(matches!(result.end(), End::Result(body) if body == "{\"x\":1}"));
        let timed_out = Outcome::timed_out(Duration::from_secs(30));
        match timed_out.end() {
            End::Error { kind, message } => {
                assert_eq!(kind, "Sandbox.Timedout");
                assert!(message.contains("30s"), "{message}");
            }
            End::Result(_) => panic!("a timeout is an error"),
        }
    }
}
