//! A connection's future beside its expiry, in one box: whichever ends
//! first ends the connection.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::Watcher;

use super::activity::{self, Activity};

pin_project_lite::pin_project! {
    /// Runs a connection until it ends or `expired` says it is to be
    /// closed; the two futures in place, polled through pins.
    pub(super) struct UntilExpired<C, E> {
        #[pin]
        pub(super) connection: C,
        #[pin]
        pub(super) expired: E,
        // Dropped after the connection.
        pub(super) _held: Option<Watcher>,
    }
}

/// How a connection's future ends: fngate's loop with nothing, hyper's
/// connections with a result.
trait Ended {
    fn into_result(self) -> Result<(), String>;
}

impl Ended for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<X: std::fmt::Display> Ended for Result<(), X> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// The connection's expiry, owning what it watches.
pub(super) async fn expiry(
    activity: Arc<Activity>,
    idle: Duration,
    header_read: Duration,
    http1: bool,
) -> activity::Expiry {
    activity.expired(idle, header_read, http1).await
}

impl<C, E> std::future::Future for UntilExpired<C, E>
where
    C: std::future::Future,
    C::Output: Ended,
    E: std::future::Future<Output = activity::Expiry>,
{
    type Output = Result<(), String>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(ended) = this.connection.poll(cx) {
            return std::task::Poll::Ready(ended.into_result());
        }
        match this.expired.poll(cx) {
            std::task::Poll::Ready(why) => {
                tracing::debug!(reason = ?why, "closing connection");
                std::task::Poll::Ready(Ok(()))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}
