//! Calls in Redis: storing one (with its idempotency key), reading it,
//! claiming pending ones from their function's queue, and the writes of
//! a call's life (end, cancel, requeue, retry), each one script.

use super::super::{CallRecord, CallState, Cancelled, Inserted, NewCall, Outcome, PendingCounts};
use super::{RedisStore, StoreError};

fn not_yet<T>() -> Result<T, StoreError> {
    Err(StoreError::Io("redis store: not built yet".to_owned()))
}

impl RedisStore {
    pub(super) async fn insert_call(&self, _call: NewCall) -> Result<Inserted, StoreError> {
        not_yet()
    }

    pub(super) async fn get_call(&self, _id: &str) -> Result<Option<CallRecord>, StoreError> {
        not_yet()
    }

    pub(super) async fn claim_calls(
        &self,
        _app: &str,
        _function: &str,
        _limit: usize,
    ) -> Result<Vec<CallRecord>, StoreError> {
        not_yet()
    }

    pub(super) async fn queue_has_pending(
        &self,
        _app: &str,
        _function: &str,
    ) -> Result<bool, StoreError> {
        not_yet()
    }

    pub(super) async fn finish_call(
        &self,
        _id: String,
        _outcome: Outcome,
        _expires_ms: i64,
    ) -> Result<bool, StoreError> {
        not_yet()
    }

    pub(super) async fn cancel_call(
        &self,
        _id: String,
        _now_ms: i64,
        _expires_ms: i64,
    ) -> Result<Cancelled, StoreError> {
        not_yet()
    }

    pub(super) async fn requeue_call(&self, _id: String) -> Result<bool, StoreError> {
        not_yet()
    }

    pub(super) async fn call_retrying(&self, _id: String) -> Result<bool, StoreError> {
        not_yet()
    }

    pub(super) async fn pending_counts(&self) -> Result<PendingCounts, StoreError> {
        not_yet()
    }

    pub(super) async fn sweep_expired(&self, _now_ms: i64) -> Result<u64, StoreError> {
        not_yet()
    }

    pub(super) async fn read_state_counts(&self) -> Result<Vec<(CallState, u64)>, StoreError> {
        not_yet()
    }
}
