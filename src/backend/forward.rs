//! Passthrough's seam: a request forwarded unchanged to the function's HTTP
//! service, whether that is its `urls` or the HTTP instances fngate runs
//! for it (`command`).

use axum::body::Body;
use http::{Request, Response};

use super::BackendError;
use super::http::{ForwardError, HttpBackend, StoredAnswer, StoredRequest};
use super::instance_http::InstanceHttpBackend;
use crate::invocation::{Principal, Trace};

/// Where a passthrough function's requests go.
pub enum Forwarder {
    /// Its configured `urls`.
    Urls(Box<HttpBackend>),
    /// Its warm HTTP instances.
    Instances(Box<InstanceHttpBackend>),
}

impl Forwarder {
    /// Forwards a client's request (see [`HttpBackend::forward`]).
    pub async fn forward(
        &self,
        request: Request<Body>,
        suffix: &str,
        trace: &Trace,
        principal: Option<&Principal>,
        deadline: tokio::time::Instant,
        body_limit: u64,
    ) -> Result<Response<Body>, ForwardError> {
        match self {
            Forwarder::Urls(urls) => {
                urls.forward(request, suffix, trace, principal, deadline, body_limit)
                    .await
            }
            Forwarder::Instances(instances) => {
                instances
                    .forward(request, suffix, trace, principal, deadline, body_limit)
                    .await
            }
        }
    }

    /// Sends a stored request and reads the whole answer (a spawned call).
    pub async fn replay(
        &self,
        stored: &StoredRequest,
        trace: &Trace,
        principal: Option<&Principal>,
        deadline: tokio::time::Instant,
    ) -> Result<StoredAnswer, BackendError> {
        match self {
            Forwarder::Urls(urls) => urls.replay(stored, trace, principal, deadline).await,
            Forwarder::Instances(instances) => {
                instances.replay(stored, trace, principal, deadline).await
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Forwarder::Urls(urls) => super::Backend::describe(urls.as_ref()),
            Forwarder::Instances(instances) => instances.describe(),
        }
    }
}
