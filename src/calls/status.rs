//! Reading a call's status, and long polls: a reader may wait for the
//! call to end, and is woken when it does.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::store::{CallRecord, StoreError, now_ms};

use super::Calls;

/// Long-poll waiters by call id: one wake-up per call that someone waits
/// for, dropped when the last waiter leaves or the call ends.
#[derive(Default)]
pub(super) struct Waiters(DashMap<String, Arc<Notify>>);

impl Waiters {
    /// The wake-up for `id`'s end, shared with its other waiters.
    fn watch(&self, id: &str) -> Arc<Notify> {
        self.0.entry(id.to_owned()).or_default().clone()
    }

    /// Drops `id`'s wake-up once nobody else holds it.
    fn leave(&self, id: &str) {
        self.0.remove_if(id, |_, w| Arc::strong_count(w) == 1);
    }

    /// Wakes every long poll: each reads its call again.
    pub(super) fn wake_all(&self) {
        for waiter in self.0.iter() {
            waiter.value().notify_waiters();
        }
    }

    /// Wakes everyone waiting for `id`.
    fn wake(&self, id: &str) {
        if let Some((_, waiter)) = self.0.remove(id) {
            waiter.notify_waiters();
        }
    }
}

impl Calls {
    /// The call's record, waiting up to `wait` for it to end. `None` for
    /// an unknown or expired id.
    pub async fn status(&self, id: &str, wait: Duration) -> Result<Option<CallRecord>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait.min(self.config.max_wait);
        let result = loop {
            let waiter = (!wait.is_zero()).then(|| self.waiters.watch(id));
            // Created before the read, so an end announced after it is not missed.
            let notified = waiter.as_ref().map(|w| w.notified());
            let record = match self.store.get(id).await {
                Ok(Some(record)) if !record.is_expired(now_ms()) => record,
                Ok(_) => break Ok(None),
                Err(e) => break Err(e),
            };
            if record.state.is_finished() || tokio::time::Instant::now() >= deadline {
                break Ok(Some(record));
            }
            let Some(notified) = notified else {
                break Ok(Some(record));
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = self.stopping.cancelled() => break Ok(Some(record)),
            }
        };
        self.waiters.leave(id);
        result
    }

    /// Tells the call's long polls and the webhook sender that it ended.
    pub(super) fn announce_end(&self, id: &str) {
        self.waiters.wake(id);
        self.ended.notify_one();
    }
}
