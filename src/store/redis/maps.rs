//! Spawned maps in Redis: the map is a call (`P call:{id}`, with its
//! input counts), its inputs a hash by index, its pending inputs a list
//! that any replica claims from.

use super::super::map::{ClaimedInput, InputEnded, MapInput, MapProgress, OpenMap, StoredInput};
use super::super::{Inserted, NewCall, Outcome};
use super::{RedisStore, StoreError};

fn not_yet<T>() -> Result<T, StoreError> {
    Err(StoreError::Io("redis store: not built yet".to_owned()))
}

impl RedisStore {
    pub(super) async fn insert_map_call(
        &self,
        _call: NewCall,
        _inputs: Vec<MapInput>,
        _expires_ms: i64,
    ) -> Result<Inserted, StoreError> {
        not_yet()
    }

    pub(super) async fn claim_map_inputs(
        &self,
        _id: String,
        _limit: usize,
    ) -> Result<Vec<ClaimedInput>, StoreError> {
        not_yet()
    }

    pub(super) async fn finish_map_input(
        &self,
        _id: String,
        _index: u64,
        _outcome: Outcome,
        _expires_ms: i64,
    ) -> Result<InputEnded, StoreError> {
        not_yet()
    }

    pub(super) async fn map_input_retrying(
        &self,
        _id: String,
        _index: u64,
    ) -> Result<bool, StoreError> {
        not_yet()
    }

    pub(super) async fn read_map_progress(&self, _id: String) -> Result<MapProgress, StoreError> {
        not_yet()
    }

    pub(super) async fn read_map_page(
        &self,
        _id: String,
        _from: u64,
        _limit: usize,
    ) -> Result<Vec<StoredInput>, StoreError> {
        not_yet()
    }

    pub(super) async fn read_open_maps(&self) -> Result<Vec<OpenMap>, StoreError> {
        not_yet()
    }
}
