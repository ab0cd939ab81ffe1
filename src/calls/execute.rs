//! Running one spawned call against its function's backend, and how a
//! backend's answer is stored as the call's outcome.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::auth::call_token::{self, Claims};
use crate::backend::BackendError;
use crate::backend::http::StoredRequest;
use crate::dispatch::Slot;
use crate::invocation::{CallId, Invocation, ParentCall, Trace, deadline_ms_after, random_hex};
use crate::registry::{Function, Target};
use crate::store::{CallRecord, FailureKind, Outcome};

use super::Calls;
use super::retry::Rerun;

/// Runs of a spawned call that may be lost to a crashed instance before
/// the crash is its outcome (502): a call that crashes every instance it
/// meets does not run forever.
const MAX_LOST_RUNS: u32 = 3;

/// How a run of a spawned call ended.
pub(super) enum Run {
    Ended(Outcome),
    /// Its instance crashed (or its worker vanished) mid-call: it runs again.
    Lost,
}

impl Calls {
    /// Runs a claimed call in `slot` until it ends or is cancelled, runs
    /// it again as its function's retries say (see `retry`), and records
    /// its end (a cancel has recorded it already).
    pub(super) async fn run_spawned(
        self: Arc<Self>,
        function: Arc<Function>,
        record: CallRecord,
        slot: Slot,
    ) {
        let stop = CancellationToken::new();
        self.running.track(
            record.id.clone(),
            stop.clone(),
            &self.registry.current(),
            &record.app,
            &record.function,
        );
        let (mut record, mut slot) = (record, slot);
        loop {
            let outcome = match self.run_once(&function, &record, &stop).await {
                Some(Run::Ended(outcome)) => outcome,
                Some(Run::Lost) => return self.requeue(&function, &record).await,
                // Cancelled: the cancel has recorded its end.
                None => return,
            };
            // No slot is held through the pause before another run.
            drop(slot);
            match self.rerun(&function, &mut record, &outcome, &stop).await {
                Rerun::Now(next) => slot = next,
                Rerun::No => return self.record_end(&record.id, outcome).await,
                Rerun::Stopped => return,
            }
        }
    }

    /// Runs a claimed call once, with a fresh timeout: how it ended, or
    /// `None` when a cancel stopped it.
    pub(super) async fn run_once(
        &self,
        function: &Function,
        record: &CallRecord,
        stop: &CancellationToken,
    ) -> Option<Run> {
        // A call a function spawned continues its parent's trace.
        let trace_id = match record.origin.as_ref().and_then(|o| o.trace_id.clone()) {
            Some(trace_id) => trace_id,
            None => random_hex::<16>(),
        };
        let trace = Trace {
            request_id: Arc::from(record.id.as_str()),
            traceparent: format!("00-{trace_id}-{}-01", random_hex::<8>()),
        };
        let deadline = tokio::time::Instant::now() + function.spec.timeout;
        let work = async {
            match (&function.target, &record.forward) {
                (Target::Invoke(backend), _) => {
                    let mut invocation = Invocation {
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
                        call_token: None,
                        parent: record.origin.as_ref().and_then(|origin| {
                            Some(Arc::new(ParentCall {
                                call_id: origin.parent_call_id.clone()?,
                                depth: origin.depth,
                            }))
                        }),
                        batch: None,
                    };
                    invocation.call_token = Some(self.call_token(function, record, &invocation));
                    if function.spec.stream {
                        return stored_stream(function, backend.as_ref(), &invocation).await;
                    }
                    let result = backend.invoke(&invocation).await;
                    if let Err(e) = &result {
                        function.metrics.record_backend_error(e);
                    }
                    let lost = matches!(result, Err(BackendError::Crashed(_)))
                        && function.spec.backend.has_instances()
                        && record.attempt < MAX_LOST_RUNS;
                    if lost {
                        Run::Lost
                    } else {
                        Run::Ended(outcome_of(result))
                    }
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
                    Run::Ended(match answer {
                        Ok(answer) => Outcome::Answered {
                            status: answer.status,
                            content_type: answer.content_type,
                            body: answer.body.to_vec(),
                        },
                        Err(e) => {
                            function.metrics.record_backend_error(&e);
                            outcome_of(Err(e))
                        }
                    })
                }
                (Target::Passthrough(_), None) => Run::Ended(outcome_of(Err(
                    BackendError::Garbage("a passthrough call without its request".to_owned()),
                ))),
            }
        };
        tokio::select! {
            run = work => Some(run),
            // Cancelled: the backend stopped what ran it (see `Running`).
            () = stop.cancelled() => None,
        }
    }
}

impl Calls {
    /// The call token of a spawned call's run: it acts as whoever spawned
    /// the call, limited to the function's `may_call`.
    fn call_token(
        &self,
        function: &Function,
        record: &CallRecord,
        invocation: &Invocation,
    ) -> Arc<str> {
        if let Some(token) = function.grantless_token(&self.tokens) {
            return token;
        }
        let origin = record.origin.as_ref();
        self.tokens.mint(&Claims {
            principal: record.principal.as_ref(),
            owner: record.owner.as_deref(),
            scopes: origin.map_or(&[], |n| n.scopes.as_slice()),
            app: &function.app,
            function: &function.key,
            may_call: &function.spec.may_call,
            call_id: &record.id,
            depth: origin.map_or(0, |n| n.depth),
            trace_id: call_token::trace_id(&invocation.trace.traceparent),
            expires_ms: invocation.deadline_ms,
        })
    }

    /// Puts a call whose run was lost back in its function's queue.
    async fn requeue(&self, function: &Function, record: &CallRecord) {
        self.running.forget(&record.id);
        tracing::warn!(call_id = %record.id, attempt = record.attempt, "the call's instance was lost mid-call; it runs again");
        match self.store.requeue(record.id.clone()).await {
            Ok(true) => {
                if let Some(wake) = self.wakes.of(&function.app, &function.key) {
                    wake.notify_one();
                }
            }
            // Cancelled meanwhile: nothing to run.
            Ok(false) => {}
            // It stays running in the store and runs again after a restart.
            Err(e) => {
                tracing::error!(call_id = %record.id, error = %e, "cannot requeue a lost call")
            }
        }
    }
}

/// A streaming function's spawned run: its items are kept as NDJSON, the
/// call's result (`Answered`, 200 `application/x-ndjson`). An error before
/// the first item ends the call as any call's error does; one after it is
/// kept as the last line, `{"error": {problem}}`, as a sync client reads it.
async fn stored_stream(
    function: &Function,
    backend: &dyn crate::backend::Backend,
    invocation: &Invocation,
) -> Run {
    use crate::backend::stream;
    let (mut lines, error) = match stream::open(backend, invocation).await {
        Ok(items) => stream::collect(items, stream::STORED_LIMIT).await,
        Err(e) => (Vec::new(), Some(e)),
    };
    if let Some(e) = &error {
        function.metrics.record_backend_error(e);
    }
    match error {
        Some(e) if lines.is_empty() => {
            // As for any call: an instance lost before the first item runs it again.
            let lost = matches!(e, BackendError::Crashed(_))
                && function.spec.backend.has_instances()
                && invocation.attempt < MAX_LOST_RUNS;
            return if lost {
                Run::Lost
            } else {
                Run::Ended(outcome_of(Err(e)))
            };
        }
        Some(e) => {
            tracing::warn!(call_id = %invocation.call_id.as_str(), error = ?e.to_string(), "a spawned stream ended with an error");
            let problem = crate::http::problem::ApiError::from_backend(e, function.spec.timeout)
                .exposing(function.spec.expose_errors)
                .problem_json(invocation.call_id.as_str());
            lines.extend_from_slice(b"{\"error\":");
            lines.extend_from_slice(&problem);
            lines.extend_from_slice(b"}\n");
        }
        None => {}
    }
    Run::Ended(Outcome::Answered {
        status: 200,
        content_type: Some(stream::NDJSON.to_owned()),
        body: lines,
    })
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
