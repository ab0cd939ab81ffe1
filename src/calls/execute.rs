//! Running one spawned call against its function's backend, and how a
//! backend's answer is stored as the call's outcome.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backend::BackendError;
use crate::backend::http::StoredRequest;
use crate::dispatch::Slot;
use crate::invocation::{CallId, Invocation, Trace, deadline_ms_after, random_hex};
use crate::registry::{Function, Target};
use crate::store::{CallRecord, FailureKind, Outcome};

use super::Calls;

impl Calls {
    /// Runs a claimed call in `slot` until it ends or is cancelled, and
    /// records its end (a cancel has recorded it already).
    pub(super) async fn run_spawned(
        self: Arc<Self>,
        function: Arc<Function>,
        record: CallRecord,
        slot: Slot,
    ) {
        let stop = CancellationToken::new();
        self.running.track(record.id.clone(), stop.clone());
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
                        class: function.class_call_stored(record.parameters.as_deref()),
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
        // The init error's type is kept: reading the call names it.
        Err(BackendError::InitFailed { kind, message }) => Outcome::Failed {
            kind: FailureKind::Backend,
            error_type: kind,
            message,
        },
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
