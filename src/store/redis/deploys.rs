//! Deploys in Redis: every version of every deployed key, a list per key
//! (`P deploy:{kind}/{app}/{name}`, oldest first, a version's number is
//! its place in the list counted from 1) and the set of keys (`P
//! deploys`); a new version is announced to every replica (`d`).

use std::sync::LazyLock;

use super::super::deploys::{DeployVersion, DeployedTable, kind_name, kind_of};
use super::{RedisStore, StoreError, store_error};
use crate::config::OverlayKey;

/// RPUSH the version, SADD its key, PUBLISH `d`: answers the number.
static PUSH: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(include_str!("deploy_push.lua")));

/// One version as stored in its key's list: the embedded store's columns
/// (`table_json`, `to_file`, `created_ms`); the key is the list's name.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredVersion {
    /// The table; absent for a delete or a return to the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    table: Option<serde_json::Value>,
    /// No table and true: back to the file's table; false: deleted.
    #[serde(default)]
    to_file: bool,
    created_ms: i64,
}

impl StoredVersion {
    fn of(table: DeployedTable, created_ms: i64) -> StoredVersion {
        let (table, to_file) = match table {
            DeployedTable::Table(table) => (Some(table), false),
            DeployedTable::Deleted => (None, false),
            DeployedTable::File => (None, true),
        };
        StoredVersion {
            table,
            to_file,
            created_ms,
        }
    }

    /// Version `version` of `key`, from its list entry.
    fn read(key: &OverlayKey, version: u64, text: &[u8]) -> Result<DeployVersion, StoreError> {
        let stored: StoredVersion = serde_json::from_slice(text).map_err(|e| {
            StoreError::Io(format!(
                "redis: version {version} of {key} is unreadable: {e}"
            ))
        })?;
        let table = match (stored.table, stored.to_file) {
            (Some(table), _) => DeployedTable::Table(table),
            (None, false) => DeployedTable::Deleted,
            (None, true) => DeployedTable::File,
        };
        Ok(DeployVersion {
            key: key.clone(),
            version,
            table,
            created_ms: stored.created_ms,
        })
    }
}

/// A key as `P deploys` holds it: `{kind}/{app}/{name}`.
fn key_text(key: &OverlayKey) -> String {
    format!("{}/{}/{}", kind_name(key.kind), key.app, key.name)
}

/// The key a member of `P deploys` names; `None` for a kind this version
/// does not know (left alone, as the embedded store leaves such rows).
fn parse_key_text(text: &str) -> Option<OverlayKey> {
    let mut parts = text.splitn(3, '/');
    let kind = kind_of(parts.next()?)?;
    let app = parts.next()?;
    let name = parts.next()?;
    Some(OverlayKey {
        app: app.to_owned(),
        kind,
        name: name.to_owned(),
    })
}

impl RedisStore {
    fn deploy_list(&self, key: &OverlayKey) -> String {
        self.keys.key(&format!("deploy:{}", key_text(key)))
    }

    pub(super) async fn push_deploy(
        &self,
        key: OverlayKey,
        table: DeployedTable,
        created_ms: i64,
    ) -> Result<u64, StoreError> {
        let entry = serde_json::to_string(&StoredVersion::of(table, created_ms))
            .map_err(|e| StoreError::Io(format!("redis: a deploy of {key}: {e}")))?;
        let version: u64 = PUSH
            .key(self.deploy_list(&key))
            .key(self.keys.key("deploys"))
            .key(self.keys.events())
            .arg(entry)
            .arg(key_text(&key))
            .invoke_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        Ok(version)
    }

    pub(super) async fn read_deploy_versions(
        &self,
        key: OverlayKey,
    ) -> Result<Vec<DeployVersion>, StoreError> {
        let entries: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(self.deploy_list(&key))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        (1..)
            .zip(entries)
            .map(|(version, text)| StoredVersion::read(&key, version, &text))
            .collect()
    }

    /// The last entry of every known key's list, read in one atomic
    /// pipeline (so a version's number and its entry agree), ordered by
    /// app, kind and name as the embedded store orders them.
    pub(super) async fn read_latest_deploys(&self) -> Result<Vec<DeployVersion>, StoreError> {
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.key("deploys"))
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        let mut keys: Vec<OverlayKey> = members.iter().filter_map(|m| parse_key_text(m)).collect();
        keys.sort_by(|a, b| {
            (&a.app, kind_name(a.kind), &a.name).cmp(&(&b.app, kind_name(b.kind), &b.name))
        });
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in &keys {
            let list = self.deploy_list(key);
            pipe.cmd("LLEN").arg(&list).cmd("LINDEX").arg(&list).arg(-1);
        }
        let answers: Vec<(u64, Option<Vec<u8>>)> = pipe
            .query_async(&mut self.connection())
            .await
            .map_err(store_error)?;
        let mut latest = Vec::with_capacity(keys.len());
        for (key, (version, entry)) in keys.iter().zip(answers) {
            if let Some(text) = entry {
                latest.push(StoredVersion::read(key, version, &text)?);
            }
        }
        Ok(latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OverlayKind;

    #[test]
    fn a_key_reads_back_from_its_text_and_unknown_kinds_are_left_alone() {
        let key = OverlayKey {
            app: "demo".to_owned(),
            kind: OverlayKind::Class,
            name: "Model".to_owned(),
        };
        assert_eq!(key_text(&key), "class/demo/Model");
        assert_eq!(parse_key_text("class/demo/Model"), Some(key));
        assert_eq!(parse_key_text("widget/demo/Model"), None);
        assert_eq!(parse_key_text("function/demo"), None);
    }
}
