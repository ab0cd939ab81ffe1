//! The admin API: deploys without a restart, their versions and
//! rollbacks, and the console, on a listener of its own.

pub mod console;

use std::sync::Arc;

use crate::config::Overlays;
use crate::store::{CallStore, StoreError};

/// What every admin route is given: the gateway's state (registry, calls,
/// store, metrics) and the reloader that deploys go through.
pub struct AdminContext {
    pub state: Arc<crate::http::AppState>,
    pub reloader: Arc<crate::reload::Reloader>,
}

/// The deploys stored by the admin API, to lay over the file at start-up.
pub async fn stored_overlays(_store: &dyn CallStore) -> Result<Overlays, StoreError> {
    Ok(Overlays::default())
}
