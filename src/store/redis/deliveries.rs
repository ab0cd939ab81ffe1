//! Webhook deliveries in Redis: due ones are taken with a lease, so that
//! of several replicas one sends each attempt.

use super::super::Due;
use super::{RedisStore, StoreError};

fn not_yet<T>() -> Result<T, StoreError> {
    Err(StoreError::Io("redis store: not built yet".to_owned()))
}

impl RedisStore {
    pub(super) async fn take_due_deliveries(
        &self,
        _now_ms: i64,
        _limit: usize,
    ) -> Result<Due, StoreError> {
        not_yet()
    }

    pub(super) async fn record_delivery_attempt(
        &self,
        _call_id: String,
        _attempts: u32,
        _retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        not_yet()
    }
}
