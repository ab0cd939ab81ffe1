//! Webhook deliveries in Redis: due ones are taken with a lease, so that
//! of several replicas one sends each attempt. A replica that stops
//! mid-attempt leaves its deliveries to come due again when their lease
//! lapses: a delivery is sent at least once (with the same `webhook-id`).

use std::sync::LazyLock;
use std::time::Duration;

use super::super::{Delivery, Due};
use super::{RedisStore, StoreError, store_error};

/// How long a taken delivery is this replica's before another may take
/// it. It must outlast what the sender does with a delivery it took: one
/// attempt is at most 10 s (the sender's attempt timeout, answer
/// included), but the sender may first keep a taken delivery waiting for
/// a free slot (to one hanging receiver host: 32 waiting behind 8
/// running, about 50 s; in all: 1024 behind 128, about 90 s). Too short
/// and two replicas send the same attempt; too long only delays a dead
/// replica's deliveries.
pub(crate) const DELIVERY_LEASE: Duration = Duration::from_secs(120);

/// Takes the due deliveries (leasing them), answers the next due time.
static TAKE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("delivery_take.lua")));

/// Ends a delivery or sets when it is due again and its attempts.
static ATTEMPTED: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("delivery_attempted.lua")));

impl RedisStore {
    /// Up to `limit` deliveries due at `now_ms`, oldest due first, each
    /// leased to this replica for [`DELIVERY_LEASE`]; and the next due
    /// time after them (a lease's end included, so a lapsed lease is
    /// looked at again).
    pub(super) async fn take_due_deliveries(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Due, StoreError> {
        let (taken, next): (Vec<(String, String, u32)>, Option<i64>) = TAKE
            .key(self.keys.key("deliveries"))
            .arg(now_ms)
            .arg(limit)
            .arg(DELIVERY_LEASE.as_millis() as i64)
            .arg(self.keys.prefix())
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        let due = taken
            .into_iter()
            .map(|(call_id, url, attempts)| Delivery {
                call_id,
                url,
                attempts,
            })
            .collect();
        Ok((due, next))
    }

    /// `retry_at` `None` ends the delivery; else it is due then, with
    /// `attempts` made. A delivery that is gone stays gone.
    pub(super) async fn record_delivery_attempt(
        &self,
        call_id: String,
        attempts: u32,
        retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let due_again = retry_at.map(|at| at.to_string()).unwrap_or_default();
        let () = ATTEMPTED
            .key(self.keys.key("deliveries"))
            .key(self.keys.key(&format!("delivery:{call_id}")))
            .arg(&call_id)
            .arg(attempts)
            .arg(due_again)
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        Ok(())
    }
}
