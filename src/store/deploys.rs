//! Deploys in the call store: every version of every function's and
//! class's table the admin API deployed, so deploys survive restarts and
//! each can be rolled back to.

use crate::config::{OverlayKey, OverlayKind};

/// One stored version of a deployed table.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployVersion {
    pub key: OverlayKey,
    /// 1 for the first deploy of `key`, then one more per deploy,
    /// delete and rollback.
    pub version: u64,
    /// The table as deployed (JSON with the TOML's keys); `None` for a delete.
    pub table: Option<serde_json::Value>,
    pub created_ms: i64,
}

/// The kind as stored: `function` or `class`.
pub(crate) fn kind_name(kind: OverlayKind) -> &'static str {
    match kind {
        OverlayKind::Function => "function",
        OverlayKind::Class => "class",
    }
}

/// The kind a stored name stands for (`None` for one this version does
/// not know).
pub(crate) fn kind_of(name: &str) -> Option<OverlayKind> {
    match name {
        "function" => Some(OverlayKind::Function),
        "class" => Some(OverlayKind::Class),
        _ => None,
    }
}
