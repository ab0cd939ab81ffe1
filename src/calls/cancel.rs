//! Cancelling calls, and the stop tokens of the calls running in this
//! process that a cancel fires.

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use crate::store::{Cancelled, StoreError, now_ms};

use super::Calls;

/// The calls running in this process, by id, each with the token that
/// stops its work.
#[derive(Default)]
pub(super) struct Running(DashMap<String, CancellationToken>);

impl Running {
    /// Notes that `id` runs here until `forget`, stopped by `stop`.
    pub(super) fn track(&self, id: String, stop: CancellationToken) {
        self.0.insert(id, stop);
    }

    /// Notes that `id` no longer runs here.
    pub(super) fn forget(&self, id: &str) {
        self.0.remove(id);
    }

    /// Stops `id`'s work, if it runs here.
    fn stop(&self, id: &str) {
        if let Some((_, running)) = self.0.remove(id) {
            running.cancel();
        }
    }
}

impl Calls {
    /// Cancels a call: a pending one never runs, a running one here is stopped.
    pub async fn cancel(&self, id: &str) -> Result<Cancelled, StoreError> {
        let answer = self
            .store
            .cancel(id.to_owned(), now_ms(), self.expires_ms())
            .await?;
        match answer {
            Cancelled::Now(_) => {
                self.running.stop(id);
                self.announce_end(id);
            }
            Cancelled::AlreadyFinished(_) | Cancelled::NotFound => {}
        }
        Ok(answer)
    }
}
