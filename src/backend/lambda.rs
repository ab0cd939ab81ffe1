//! The `lambda` backend: calls run on warm instances that speak the Lambda
//! Runtime API. A call leases an instance from its pool (a class's
//! parameter set picks the pool), puts its event in the instance's
//! mailbox and waits for the instance's answer until the deadline. Past
//! the deadline, or when the caller goes away (a cancel, a client that
//! left), the instance is stopped and replaced: a Lambda runtime client
//! cannot be told to drop a call.

use std::sync::Arc;

use bytes::Bytes;

use tokio::sync::{mpsc, oneshot};

use super::stream::{self, ItemSource, ItemStream};
use super::{Backend, BackendError, BoxFuture};
use crate::instances::runtime_api::{Delivery, Reply};
use crate::instances::{Endpoint, Lease, ParameterSets};
use crate::invocation::Invocation;

pub struct LambdaBackend {
    sets: Arc<ParameterSets>,
    /// `app.function`, or `app.class.method`: the ARN's function name.
    name: String,
    command: String,
}

impl LambdaBackend {
    pub fn new(sets: Arc<ParameterSets>, name: String, command: &[String]) -> LambdaBackend {
        LambdaBackend {
            sets,
            name,
            command: command.join(" "),
        }
    }

    async fn run(&self, invocation: &Invocation) -> Result<Bytes, BackendError> {
        let pool = self
            .sets
            .pool(invocation.parameter_values(self.sets.names()));
        let lease = tokio::time::timeout_at(invocation.deadline, pool.lease())
            .await
            .map_err(|_| BackendError::Timeout)??;
        run_event(lease, delivery(invocation, &self.name), invocation).await
    }
}

impl LambdaBackend {
    /// Starts a streaming call: the instance's items come through its
    /// mailbox as it posts them (see `runtime_api`'s streaming response
    /// mode). A worker on another machine answers its one result as one
    /// item.
    async fn open_stream(&self, invocation: &Invocation) -> Result<ItemStream, BackendError> {
        let pool = self
            .sets
            .pool(invocation.parameter_values(self.sets.names()));
        let lease = tokio::time::timeout_at(invocation.deadline, pool.lease())
            .await
            .map_err(|_| BackendError::Timeout)??;
        let delivery = delivery(invocation, &self.name);
        let Endpoint::Lambda(mailbox) = lease.endpoint() else {
            return run_event(lease, delivery, invocation)
                .await
                .map(stream::single);
        };
        let (sender, receiver) = mpsc::channel(16);
        let ended = mailbox.deliver_streaming(delivery, sender)?;
        let items = LambdaItems {
            running: Running(Some(lease)),
            items: receiver,
            open: true,
            ended,
            reply: None,
            done: false,
        };
        Ok(stream::from_source(items))
    }
}

/// A streaming call on a Lambda instance: its items, then how it ended.
/// Dropped before the end (timeout, cancel, a client that left), it stops
/// the instance.
struct LambdaItems {
    running: Running,
    items: mpsc::Receiver<Bytes>,
    /// False once the mailbox dropped the items' sender.
    open: bool,
    ended: oneshot::Receiver<Reply>,
    /// The call's end, once it came (items sent before it may still wait).
    reply: Option<Reply>,
    done: bool,
}

impl ItemSource for LambdaItems {
    async fn next(&mut self) -> Option<Result<Bytes, BackendError>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(reply) = self.reply.take() {
                if let Ok(item) = self.items.try_recv() {
                    self.reply = Some(reply);
                    return Some(Ok(item));
                }
                self.done = true;
                let lease = self
                    .running
                    .0
                    .take()
                    .expect("the lease is held until the end");
                return match reply {
                    Ok(_) => {
                        lease.succeeded();
                        None
                    }
                    Err(e) => Some(Err(e)),
                };
            }
            tokio::select! {
                biased;
                item = self.items.recv(), if self.open => match item {
                    Some(item) => return Some(Ok(item)),
                    None => self.open = false,
                },
                reply = &mut self.ended => {
                    self.reply = Some(reply.unwrap_or_else(|_| {
                        Err(BackendError::Crashed("the instance stopped during the call".to_owned()))
                    }));
                }
            }
        }
    }
}

/// Hands `delivery` to the leased instance (its Runtime API mailbox, or a
/// worker's queue) and waits for its end until the deadline. From the
/// hand-over until its answer the instance is this call's: if the call
/// ends early (timeout, cancel, caller gone), the instance is stopped.
pub(crate) async fn run_event(
    lease: Lease,
    delivery: Delivery,
    invocation: &Invocation,
) -> Result<Bytes, BackendError> {
    let ended = match lease.endpoint() {
        Endpoint::Lambda(mailbox) => mailbox.deliver(delivery)?,
        Endpoint::Remote(worker) => worker.deliver(delivery)?,
        Endpoint::Http(_) => {
            return Err(BackendError::Garbage(
                "an HTTP instance takes requests, not events".to_owned(),
            ));
        }
    };
    let mut running = Running(Some(lease));
    match tokio::time::timeout_at(invocation.deadline, ended).await {
        Ok(Ok(reply)) => {
            let lease = running.0.take().expect("the lease is held until here");
            if reply.is_ok() {
                lease.succeeded();
            }
            reply
        }
        Ok(Err(_)) => Err(BackendError::Crashed(
            "the instance stopped during the call".to_owned(),
        )),
        Err(_) => {
            tracing::warn!(call_id = %invocation.call_id.as_str(), "call past its timeout: stopping its instance");
            Err(BackendError::Timeout)
        }
    }
}

/// The event and its Runtime API headers for `invocation`; `name` is the
/// function name in its ARN.
pub(crate) fn delivery(invocation: &Invocation, name: &str) -> Delivery {
    let context = serde_json::json!({
        "call_id": invocation.call_id.as_str(),
        "app": &*invocation.app,
        "function": &*invocation.function,
    });
    Delivery {
        call_id: invocation.call_id.as_str().to_owned(),
        event: Bytes::from(invocation.to_json_with_token()),
        deadline_ms: invocation.deadline_ms,
        arn: format!("arn:aws:lambda:local:000000000000:function:{name}"),
        trace_id: xray_trace_id(&invocation.trace.traceparent),
        client_context: context.to_string(),
    }
}

/// A lease on an instance that is running a call: dropped before the call
/// ended (timeout, cancel, caller gone), it stops the instance.
struct Running(Option<Lease>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(lease) = self.0.take() {
            lease.retire();
        }
    }
}

/// The W3C `traceparent` as an X-Ray trace header, as Lambda gives it:
/// `Root=1-{8 hex}-{24 hex};Parent={16 hex};Sampled={0|1}`.
fn xray_trace_id(traceparent: &str) -> String {
    let mut parts = traceparent.split('-');
    let (_, trace, parent, flags) = (parts.next(), parts.next(), parts.next(), parts.next());
    match (trace, parent) {
        (Some(trace), Some(parent)) if trace.len() == 32 && parent.len() == 16 => {
            let sampled = flags
                .and_then(|f| u8::from_str_radix(f, 16).ok())
                .map_or(0, |f| f & 1);
            format!(
                "Root=1-{}-{};Parent={parent};Sampled={sampled}",
                &trace[..8],
                &trace[8..]
            )
        }
        _ => String::new(),
    }
}

impl Backend for LambdaBackend {
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
        format!("lambda {}", self.command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_becomes_an_xray_header() {
        assert_eq!(
            xray_trace_id("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            "Root=1-0af76519-16cd43dd8448eb211c80319c;Parent=b7ad6b7169203331;Sampled=1"
        );
        assert_eq!(xray_trace_id("garbage"), "");
    }
}
