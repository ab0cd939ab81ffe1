//! The `http` backend with `command`: calls go to warm instances, each an
//! HTTP server fngate started with `PORT`, exactly as the `http` backend
//! sends them to its URLs (passthrough included). A call leases a unit of
//! an instance's capacity (`instance_concurrency` per instance) for as long
//! as it runs: for passthrough, until the answer's body has been sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};

use super::http::{ForwardError, HttpBackend, StoredAnswer, StoredRequest};
use super::stream::ItemStream;
use super::{Backend, BackendError, BoxFuture};
use dashmap::DashMap;
use futures_util::StreamExt;

use crate::instances::{Endpoint, InstanceRef, Lease, ParameterSets};
use crate::invocation::{Invocation, Principal, Trace};

pub struct InstanceHttpBackend {
    sets: Arc<ParameterSets>,
    /// `app.function`: what a worker's instance is told it runs.
    name: String,
    command: String,
    /// The instance running each call, for a cancel to stop it.
    running: Arc<DashMap<String, InstanceRef>>,
}

/// Removes a call from `running` when its run ends, however it ends.
struct Tracked<'a> {
    running: &'a DashMap<String, InstanceRef>,
    call_id: &'a str,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.running.remove(self.call_id);
    }
}

impl InstanceHttpBackend {
    pub fn new(sets: Arc<ParameterSets>, name: String, command: &[String]) -> InstanceHttpBackend {
        InstanceHttpBackend {
            sets,
            name,
            command: command.join(" "),
            running: Arc::new(DashMap::new()),
        }
    }

    /// Leases an instance of the pool for `values`, within `deadline`.
    async fn lease(
        &self,
        values: Vec<String>,
        deadline: tokio::time::Instant,
    ) -> Result<Lease, BackendError> {
        let pool = self.sets.pool(values);
        tokio::time::timeout_at(deadline, pool.lease())
            .await
            .map_err(|_| BackendError::Timeout)?
    }

    async fn run(&self, invocation: &Invocation) -> Result<Bytes, BackendError> {
        let values = invocation.parameter_values(self.sets.names());
        let lease = self.lease(values, invocation.deadline).await?;
        let call_id = invocation.call_id.as_str();
        self.running
            .insert(call_id.to_owned(), lease.instance_ref());
        let _tracked = Tracked {
            running: &self.running,
            call_id,
        };
        let http = match lease.endpoint() {
            Endpoint::Http(http) => http,
            // A worker on another machine calls its own instance.
            Endpoint::Remote(_) | Endpoint::Lambda(_) => {
                let delivery = super::lambda::delivery(invocation, &self.name);
                return super::lambda::run_event(lease, delivery, invocation).await;
            }
        };
        let result = http.invoke(invocation).await;
        if result.is_ok() {
            lease.succeeded();
        }
        result
    }

    /// Starts a streaming call on an instance, leased (and named for a
    /// cancel) for as long as its stream lives. A worker's instance
    /// answers its one result as one item.
    async fn open_stream(&self, invocation: &Invocation) -> Result<ItemStream, BackendError> {
        let values = invocation.parameter_values(self.sets.names());
        let lease = self.lease(values, invocation.deadline).await?;
        let Endpoint::Http(http) = lease.endpoint() else {
            let delivery = super::lambda::delivery(invocation, &self.name);
            let result = super::lambda::run_event(lease, delivery, invocation).await;
            return result.map(super::stream::single);
        };
        let items = http.open_stream(invocation).await?;
        lease.succeeded();
        let call_id = invocation.call_id.as_str().to_owned();
        self.running.insert(call_id.clone(), lease.instance_ref());
        let held = StreamLease {
            _lease: lease,
            running: self.running.clone(),
            call_id,
        };
        Ok(Box::pin(items.map(move |item| {
            let _held = &held;
            item
        })))
    }

    /// Forwards a passthrough request to an instance; the instance stays
    /// leased until the answer's body has been read to its end (or dropped).
    pub async fn forward(
        &self,
        request: Request<Body>,
        suffix: &str,
        trace: &Trace,
        principal: Option<&Principal>,
        deadline: tokio::time::Instant,
        body_limit: u64,
    ) -> Result<Response<Body>, ForwardError> {
        let values = vec![String::new(); self.sets.names().len()];
        let lease = self.lease(values, deadline).await?;
        let response = http_of(&lease)
            .forward(request, suffix, trace, principal, deadline, body_limit)
            .await?;
        lease.succeeded();
        let (parts, body) = response.into_parts();
        let body = Body::new(LeasedBody {
            inner: body,
            lease: Some(lease),
        });
        Ok(Response::from_parts(parts, body))
    }

    /// Sends a stored passthrough request to an instance and reads the
    /// whole answer.
    pub async fn replay(
        &self,
        stored: &StoredRequest,
        trace: &Trace,
        principal: Option<&Principal>,
        deadline: tokio::time::Instant,
    ) -> Result<StoredAnswer, BackendError> {
        let values = vec![String::new(); self.sets.names().len()];
        let lease = self.lease(values, deadline).await?;
        let answer = http_of(&lease)
            .replay(stored, trace, principal, deadline)
            .await;
        if answer.is_ok() {
            lease.succeeded();
        }
        answer
    }

    pub fn describe(&self) -> String {
        format!("http instances {}", self.command)
    }
}

/// The leased instance's HTTP server: passthrough functions take no
/// workers, so their instances are all local HTTP servers.
fn http_of(lease: &Lease) -> &HttpBackend {
    match lease.endpoint() {
        Endpoint::Http(http) => http,
        Endpoint::Lambda(_) | Endpoint::Remote(_) => {
            unreachable!("a passthrough function's instances are HTTP servers")
        }
    }
}

/// A streaming call's hold on its instance: the lease, and its entry in
/// `running` (for a cancel), until the stream is dropped.
struct StreamLease {
    _lease: Lease,
    running: Arc<DashMap<String, InstanceRef>>,
    call_id: String,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.running.remove(&self.call_id);
    }
}

/// A passthrough answer's body, holding its instance's lease until it ends.
struct LeasedBody {
    inner: Body,
    lease: Option<Lease>,
}

impl http_body::Body for LeasedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.lease = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Backend for InstanceHttpBackend {
    fn invoke<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<Bytes, BackendError>> {
        Box::pin(self.run(invocation))
    }

    fn invoke_stream<'a>(
        &'a self,
        invocation: &'a Invocation,
    ) -> BoxFuture<'a, Result<ItemStream, BackendError>> {
        Box::pin(self.open_stream(invocation))
    }

    fn describe(&self) -> String {
        InstanceHttpBackend::describe(self)
    }

    /// A cancelled call's instance is stopped (and replaced): the other
    /// calls it was serving end with a 502, as when it crashes.
    fn abort(&self, call_id: &str) {
        if let Some((_, instance)) = self.running.remove(call_id) {
            instance.retire();
        }
    }
}
