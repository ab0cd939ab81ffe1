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
    pub table: DeployedTable,
    pub created_ms: i64,
}

/// What a version serves.
#[derive(Debug, Clone, PartialEq)]
pub enum DeployedTable {
    /// This table (JSON with the TOML's keys), in place of the file's.
    Table(serde_json::Value),
    /// Nothing: the file's table of that name, if any, is taken away too.
    Deleted,
    /// Whatever the configuration file says (version 0 of every key).
    File,
}

impl DeployedTable {
    /// The overlay it lays over the file: `None` for none at all.
    pub fn overlay(&self) -> Option<Option<serde_json::Value>> {
        match self {
            DeployedTable::Table(table) => Some(Some(table.clone())),
            DeployedTable::Deleted => Some(None),
            DeployedTable::File => None,
        }
    }
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
