//! Deploys, one at a time: a new table (or a delete) is laid over the
//! others and validated whole by the reloader, which swaps the registry;
//! then the version is stored in one durable write before the answer.
//! Should that write fail, the previous deploys are served again and the
//! client is told nothing changed (503).

use std::sync::Arc;

use serde::Serialize;

use super::AdminContext;
use super::problem::AdminError;
use crate::config::{OverlayKey, OverlayKind};
use crate::registry::{Lookup, Registry};
use crate::reload::Changes;
use crate::store::deploys::{DeployVersion, DeployedTable, kind_name};
use crate::store::now_ms;

/// What a deploy made: its version, and what it changed, by route.
#[derive(Debug, Serialize)]
pub struct Deployed {
    pub app: String,
    pub kind: &'static str,
    pub name: String,
    pub version: u64,
    /// For a rollback: the version whose table it deployed again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<u64>,
    pub changes: Changes,
    /// Whether the function or class was not served before (201).
    #[serde(skip)]
    pub created: bool,
}

/// `table` in place of `key`'s, as a new version.
pub async fn deploy(
    ctx: Arc<AdminContext>,
    key: OverlayKey,
    table: DeployedTable,
) -> Result<Deployed, AdminError> {
    to_the_end(async move {
        let _one_at_a_time = ctx.deploying.lock().await;
        deploy_locked(&ctx, key, table, None).await
    })
    .await
}

/// Stops serving `key` (404 unless it serves now), as a new version.
pub async fn delete(ctx: Arc<AdminContext>, key: OverlayKey) -> Result<Deployed, AdminError> {
    to_the_end(async move {
        let _one_at_a_time = ctx.deploying.lock().await;
        known(&ctx, &key).await?;
        deploy_locked(&ctx, key, DeployedTable::Deleted, None).await
    })
    .await
}

/// Runs a deploy in a task of its own: a client that goes away mid-deploy
/// must not stop it between the swap and the store write (or the revert).
async fn to_the_end(
    deploy: impl Future<Output = Result<Deployed, AdminError>> + Send + 'static,
) -> Result<Deployed, AdminError> {
    tokio::spawn(deploy).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "admin: a deploy failed");
        Err(AdminError::Internal)
    })
}

async fn deploy_locked(
    ctx: &AdminContext,
    key: OverlayKey,
    table: DeployedTable,
    rolled_back_to: Option<u64>,
) -> Result<Deployed, AdminError> {
    let created = !serves(&ctx.state.registry.current(), &key);
    let before = ctx.reloader.overlays().await;
    let mut after = before.clone();
    match table.overlay() {
        Some(overlay) => after.0.insert(key.clone(), overlay),
        None => after.0.remove(&key),
    };
    let changes = ctx.reloader.apply(after).await?;
    let store = ctx.state.calls.store();
    match store.record_deploy(key.clone(), table, now_ms()).await {
        Ok(version) => {
            tracing::info!(deploy = %key, version, added = ?changes.added, changed = ?changes.changed, removed = ?changes.removed, "admin: deployed");
            Ok(Deployed {
                kind: kind_name(key.kind),
                app: key.app,
                name: key.name,
                version,
                rolled_back_to,
                changes,
                created,
            })
        }
        Err(e) => {
            tracing::error!(deploy = %key, error = %e, "admin: the deploy could not be stored; serving the previous deploys again");
            if let Err(revert) = ctx.reloader.apply(before).await {
                tracing::error!(deploy = %key, error = %revert, "admin: the previous deploys no longer apply; the unstored deploy keeps serving until the next restart");
            }
            Err(AdminError::StoreUnavailable)
        }
    }
}

/// Deploys version `to` of `key` again (default: the one before the
/// current) as a new version. Version 0 is the configuration file's
/// table (or none): the one before the first deploy.
pub async fn rollback(
    ctx: Arc<AdminContext>,
    key: OverlayKey,
    to: Option<u64>,
) -> Result<Deployed, AdminError> {
    to_the_end(async move {
        let _one_at_a_time = ctx.deploying.lock().await;
        rollback_locked(&ctx, key, to).await
    })
    .await
}

async fn rollback_locked(
    ctx: &AdminContext,
    key: OverlayKey,
    to: Option<u64>,
) -> Result<Deployed, AdminError> {
    let versions = versions(ctx, &key).await?;
    if versions.is_empty() {
        // Served from the file, never deployed: nothing to go back to.
        return Err(AdminError::NothingToRollBack {
            app: key.app.clone(),
            name: key.name.clone(),
        });
    }
    let number = match to {
        Some(number) => number,
        None => versions.len() as u64 - 1,
    };
    let table = match number {
        0 => DeployedTable::File,
        _ => match versions.iter().find(|v| v.version == number) {
            Some(version) => version.table.clone(),
            None => {
                return Err(AdminError::VersionNotFound {
                    app: key.app.clone(),
                    name: key.name.clone(),
                    version: number,
                });
            }
        },
    };
    deploy_locked(ctx, key, table, Some(number)).await
}

/// Every stored version of `key`, oldest first; 404 when it neither
/// serves now nor was ever deployed.
pub async fn versions(
    ctx: &AdminContext,
    key: &OverlayKey,
) -> Result<Vec<DeployVersion>, AdminError> {
    let stored = ctx
        .state
        .calls
        .store()
        .deploy_versions(key.clone())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "admin: cannot read the deploys");
            AdminError::StoreUnavailable
        })?;
    if stored.is_empty() {
        known(ctx, key).await?;
    }
    Ok(stored)
}

/// 404 unless `key` serves now (`app_not_found` when its app has
/// nothing serving and nothing deployed).
pub async fn known(ctx: &AdminContext, key: &OverlayKey) -> Result<(), AdminError> {
    let registry = ctx.state.registry.current();
    if serves(&registry, key) {
        return Ok(());
    }
    let deployed_in_app = ctx
        .reloader
        .overlays()
        .await
        .0
        .keys()
        .any(|k| k.app == key.app);
    if registry.has_app(&key.app) || deployed_in_app {
        Err(AdminError::NotFound {
            app: key.app.clone(),
            kind: key.kind,
            name: key.name.clone(),
        })
    } else {
        Err(AdminError::AppNotFound {
            app: key.app.clone(),
        })
    }
}

/// Whether `key` is served by `registry` now.
fn serves(registry: &Registry, key: &OverlayKey) -> bool {
    match key.kind {
        OverlayKind::Function => {
            matches!(registry.lookup(&key.app, &key.name), Lookup::Found(f) if f.class.is_none())
        }
        OverlayKind::Class => registry.class(&key.app, &key.name).is_some(),
    }
}
