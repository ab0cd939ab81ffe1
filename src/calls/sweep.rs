//! Sweeping: deleting calls whose results have expired.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::now_ms;

use super::Calls;

impl Calls {
    /// Deletes expired calls every so often (their result TTL, between a
    /// second and a minute) until `shutdown`.
    pub(super) async fn sweep(self: Arc<Self>, shutdown: CancellationToken) {
        let every = self
            .config
            .result_ttl
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        loop {
            match self.store.sweep(now_ms()).await {
                Ok(0) => {}
                Ok(swept) => tracing::debug!(swept, "expired calls deleted"),
                Err(e) => tracing::warn!(error = %e, "sweeping expired calls failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}
