//! Adopting sync calls that outlive the sync wait, recording how a call
//! ended, and the grace period given at shutdown to adopted work.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backend::BackendError;
use crate::invocation::Invocation;
use crate::store::{CallState, NewCall, Origin, Outcome, StoreError, now_ms};

use super::{Calls, outcome_of};

impl Calls {
    /// Adopts a sync call that outlived the sync wait: stores it as running
    /// so it can be read and cancelled by id. `stop` stops its work.
    pub async fn adopt(
        &self,
        invocation: &Invocation,
        owner: Option<String>,
        stop: CancellationToken,
    ) -> Result<(), StoreError> {
        let call = NewCall {
            id: invocation.call_id.to_string(),
            app: invocation.app.to_string(),
            function: invocation.stored_function(),
            args: invocation.args.clone(),
            kwargs: invocation.kwargs.clone(),
            owner,
            principal: invocation.principal.clone(),
            parameters: invocation.class.as_ref().map(|c| c.parameters.clone()),
            origin: invocation.parent.as_ref().map(|parent| Origin {
                parent_call_id: Some(parent.call_id.clone()),
                depth: parent.depth,
                trace_id: Some(
                    crate::auth::call_token::trace_id(&invocation.trace.traceparent).to_owned(),
                ),
                scopes: Vec::new(),
            }),
            idempotency: None,
            callback_url: None,
            state: CallState::Running,
            from_sync: true,
            forward: None,
            created_ms: now_ms(),
        };
        self.running.track(
            call.id.clone(),
            stop,
            &self.registry.current(),
            &call.app,
            &call.function,
        );
        match self.store.insert(call).await {
            Ok(_) => Ok(()),
            Err(e) => {
                self.running.forget(invocation.call_id.as_str());
                Err(e)
            }
        }
    }

    /// Records how an adopted or spawned call ended and wakes its waiters.
    pub async fn finish(&self, id: &str, result: Result<bytes::Bytes, BackendError>) {
        self.record_end(id, outcome_of(result)).await;
    }

    /// Stores `outcome` as the call's end, retrying a store that cannot
    /// write now, then announces it.
    pub(super) async fn record_end(&self, id: &str, outcome: Outcome) {
        self.running.forget(id);
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .store
                .finish(id.to_owned(), outcome.clone(), self.expires_ms())
                .await
            {
                Ok(_) => break,
                // It runs again after a restart on a good store.
                Err(StoreError::Closed | StoreError::Broken(_)) => return,
                Err(e) => {
                    tracing::error!(call_id = id, error = %e, "cannot record a call's end; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        self.announce_end(id);
    }

    /// Runs work that must be given the grace period at shutdown (a sync
    /// call's task, which may outlive its request).
    pub fn spawn_task<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(work);
    }

    /// Waits, up to `grace`, until the work given to `spawn_task` has
    /// ended after shutdown. A worker runtime outlives its listener this
    /// long, so the sync calls it adopted get their grace period too.
    pub async fn settled(&self, grace: Duration) {
        let _ = tokio::time::timeout(grace, self.tasks.wait()).await;
    }
}
