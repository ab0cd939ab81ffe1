//! Deploys in Redis: every version of every deployed key, a list per key;
//! a new version is announced to every replica.

use super::super::deploys::{DeployVersion, DeployedTable};
use super::{RedisStore, StoreError};
use crate::config::OverlayKey;

fn not_yet<T>() -> Result<T, StoreError> {
    Err(StoreError::Io("redis store: not built yet".to_owned()))
}

impl RedisStore {
    pub(super) async fn push_deploy(
        &self,
        _key: OverlayKey,
        _table: DeployedTable,
        _created_ms: i64,
    ) -> Result<u64, StoreError> {
        not_yet()
    }

    pub(super) async fn read_deploy_versions(
        &self,
        _key: OverlayKey,
    ) -> Result<Vec<DeployVersion>, StoreError> {
        not_yet()
    }

    pub(super) async fn read_latest_deploys(&self) -> Result<Vec<DeployVersion>, StoreError> {
        not_yet()
    }
}
