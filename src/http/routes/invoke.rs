//! Sync calls: `POST` (or `GET`, where allowed) `/{app}/{function}`. The
//! call runs in the request's own task and answers with its result; one
//! that runs past the sync wait is adopted as a spawned call and the
//! client is sent to `/calls/{id}`. This is the hot path: nothing here
//! boxes or allocates beyond what the call itself needs, and the rare
//! adoption is boxed so its future stays out of every request's.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use futures_util::FutureExt;
use http::Response;
use tokio_util::sync::CancellationToken;

use super::stream;
use crate::backend::{Backend, BackendError};
use crate::dispatch::Slot;
use crate::http::admission::Caller;
use crate::http::input;
use crate::http::problem::ApiError;
use crate::http::respond::{backend_failure, result_response, see_other};
use crate::http::state::AppState;
use crate::invocation::{CallId, Invocation, Trace};
use crate::registry::Function;

/// Runs a sync call of `function` on `backend`: the request's arguments,
/// a concurrency slot, then the call itself.
pub async fn invoke(
    state: &Arc<AppState>,
    function: &Arc<Function>,
    backend: &Arc<dyn Backend>,
    caller: &Caller,
    trace: &Trace,
    request: Request,
) -> Result<Response<Body>, ApiError> {
    let spec = &function.spec;
    input::check_method(function, request.method())?;
    let class = input::class_call(function, request.uri().query())?;
    let encoding = spec
        .stream
        .then(|| stream::Encoding::accepted(request.headers()));
    let arguments = input::arguments(state, function, request).await?;
    let slot = function
        .limiter
        .acquire()
        .await
        .map_err(|_| ApiError::Overloaded)?;
    let (deadline_ms, deadline) = caller.deadline(spec.timeout);
    let mut invocation = Invocation {
        call_id: CallId::generate(),
        app: function.app.clone(),
        function: function.name.clone(),
        args: arguments.args,
        kwargs: arguments.kwargs,
        deadline_ms,
        deadline,
        attempt: 1,
        trace: caller.trace(trace),
        principal: caller.principal(),
        class,
        call_token: None,
        parent: caller.parent(),
        batch: None,
    };
    invocation.call_token = Some(caller.call_token(state, function, &invocation));
    let invocation = Arc::new(invocation);
    if let Some(encoding) = encoding {
        return stream::stream(function, backend, invocation, slot, encoding).await;
    }
    let owner = if spec.public { None } else { caller.owner() };
    sync_call(state, function, backend.clone(), invocation, owner, slot).await
}

/// Runs a sync call in the request's own task. It answers with the
/// result when it comes within the sync wait; past that the call is
/// adopted as a spawned call, its work moves to a task of its own, and the
/// client is sent to `/calls/{id}` with a 303. A client that leaves before
/// then stops the work (the request's future, and the work in it, is
/// dropped).
async fn sync_call(
    state: &Arc<AppState>,
    function: &Arc<Function>,
    backend: Arc<dyn Backend>,
    invocation: Arc<Invocation>,
    owner: Option<String>,
    slot: Slot,
) -> Result<Response<Body>, ApiError> {
    let mut work: SyncWork = {
        let invocation = invocation.clone();
        Box::pin(async move {
            let outcome = backend.invoke(&invocation).await;
            drop(slot);
            outcome
        })
    };
    let call_id = invocation.call_id.as_str();
    let outcome = tokio::select! {
        outcome = &mut work => outcome,
        () = tokio::time::sleep(state.sync_wait) => {
            // Boxed: the rare path's futures stay out of every request's.
            let adopted = Box::pin(adopt(state, &invocation, owner, work)).await?;
            match adopted {
                Some(outcome) => outcome,
                None => return Ok(see_other(call_id)),
            }
        }
    };
    match outcome {
        Ok(body) => Ok(result_response(call_id, body)),
        Err(e) => Err(backend_failure(function, &invocation.trace, e)),
    }
}

/// A sync call's work, running inline in its request's task.
type SyncWork = std::pin::Pin<Box<dyn Future<Output = Result<Bytes, BackendError>> + Send>>;

/// Past the sync wait: the call becomes a spawned call and its work goes
/// on in a task of its own (None), unless it ended meanwhile (its outcome).
async fn adopt(
    state: &Arc<AppState>,
    invocation: &Arc<Invocation>,
    owner: Option<String>,
    mut work: SyncWork,
) -> Result<Option<Result<Bytes, BackendError>>, ApiError> {
    let call_id = invocation.call_id.as_str();
    let stop = CancellationToken::new();
    if let Err(e) = state.calls.adopt(invocation, owner, stop.clone()).await {
        tracing::error!(call_id, error = %e, "cannot adopt a long sync call; stopping it");
        return Err(ApiError::StoreUnavailable);
    }
    if let Some(outcome) = (&mut work).now_or_never() {
        // It ended while being adopted: record it, answer directly.
        state.calls.finish(call_id, outcome.clone()).await;
        return Ok(Some(outcome));
    }
    let calls = state.calls.clone();
    let adopted = invocation.clone();
    state.calls.spawn_task(async move {
        tokio::select! {
            outcome = work => calls.finish(adopted.call_id.as_str(), outcome).await,
            // Cancelled through DELETE /calls/{id}.
            () = stop.cancelled() => {}
        }
    });
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::state;
    use crate::registry::{Lookup, Target};
    use http::{Method, StatusCode, header};

    /// What a sync call of `demo/square` that never reaches its backend
    /// answers.
    async fn refusal(
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: &'static str,
    ) -> (StatusCode, &'static str) {
        let state = state::for_tests();
        let registry = state.registry.current();
        let Lookup::Found(function) = registry.lookup("demo", "square") else {
            panic!("the test registry has demo/square");
        };
        let Target::Invoke(backend) = &function.target else {
            panic!("demo/square is an exec function");
        };
        let mut request = http::Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let request = request.body(Body::from(body)).unwrap();
        let caller = Caller {
            credentials: None,
            client: None,
            nested: None,
        };
        let trace = Trace {
            request_id: Arc::from("req-1"),
            traceparent: String::new(),
        };
        match invoke(&state, function, backend, &caller, &trace, request).await {
            Ok(response) => panic!("answered {}", response.status()),
            Err(error) => error.status_and_code(),
        }
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_any_backend_runs() {
        let json = Some("application/json");
        assert_eq!(
            refusal(Method::PUT, "/demo/square", None, "").await,
            (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        );
        assert_eq!(
            refusal(Method::POST, "/demo/square", Some("text/plain"), "x").await,
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        );
        assert_eq!(
            refusal(Method::POST, "/demo/square", json, "{\"x\":").await,
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        assert_eq!(
            refusal(Method::POST, "/demo/square?x=1", json, "{\"x\":2}").await,
            (StatusCode::BAD_REQUEST, "invalid_arguments")
        );
    }
}
