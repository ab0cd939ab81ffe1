//! The embedded store's deploys (layout 5): one row per version of a
//! deployed function's or class's table, its JSON text, or NULL for a
//! delete (`to_file` 0) or a return to the file's table (`to_file` 1). A version is one write of the writer thread, numbered in the
//! same transaction (one more than the key's latest).

use rusqlite::{Connection, Row, params};

use super::writer::Reply;
use crate::config::OverlayKey;
use crate::store::StoreError;
use crate::store::deploys::{DeployVersion, DeployedTable, kind_name, kind_of};

/// The deploys' table, created beside `calls` (by a layout-4 file too).
pub(super) const DEPLOY_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS deploys (
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    table_json TEXT,
    to_file INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (app, kind, name, version)
);
";

/// A new version for the writer thread: its key, table and time.
pub(crate) struct DeployWrite {
    pub key: OverlayKey,
    pub table: DeployedTable,
    pub created_ms: i64,
    pub reply: Reply<u64>,
}

impl DeployWrite {
    pub(super) fn answer(self, version: u64) {
        let _ = self.reply.send(Ok(version));
    }

    pub(super) fn fail(self, error: StoreError) {
        let _ = self.reply.send(Err(error));
    }
}

/// Stores the version in the writer's transaction; answers its number.
pub(super) fn apply(tx: &Connection, write: &DeployWrite) -> Result<u64, rusqlite::Error> {
    let kind = kind_name(write.key.kind);
    let latest: i64 = tx
        .prepare_cached(
            "SELECT ifnull(max(version), 0) FROM deploys WHERE app = ?1 AND kind = ?2 AND name = ?3",
        )?
        .query_row(params![write.key.app, kind, write.key.name], |row| {
            row.get(0)
        })?;
    let version = latest + 1;
    let (table, to_file) = match &write.table {
        DeployedTable::Table(table) => (Some(table.to_string()), false),
        DeployedTable::Deleted => (None, false),
        DeployedTable::File => (None, true),
    };
    tx.prepare_cached(
        "INSERT INTO deploys (app, kind, name, version, table_json, to_file, created_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        write.key.app,
        kind,
        write.key.name,
        version,
        table,
        to_file,
        write.created_ms
    ])?;
    Ok(version as u64)
}

/// Every version of `key`, oldest first.
pub(super) fn versions(
    connection: &Connection,
    key: &OverlayKey,
) -> Result<Vec<DeployVersion>, rusqlite::Error> {
    let mut statement = connection.prepare_cached(
        "SELECT app, kind, name, version, table_json, to_file, created_ms FROM deploys \
         WHERE app = ?1 AND kind = ?2 AND name = ?3 ORDER BY version",
    )?;
    let rows = statement.query_map(params![key.app, kind_name(key.kind), key.name], version)?;
    Ok(rows
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect())
}

/// The latest version of every key.
pub(super) fn latest(connection: &Connection) -> Result<Vec<DeployVersion>, rusqlite::Error> {
    let mut statement = connection.prepare_cached(
        "SELECT d.app, d.kind, d.name, d.version, d.table_json, d.to_file, d.created_ms FROM deploys d \
         JOIN (SELECT app, kind, name, max(version) AS version FROM deploys GROUP BY app, kind, name) l \
         ON d.app = l.app AND d.kind = l.kind AND d.name = l.name AND d.version = l.version \
         ORDER BY d.app, d.kind, d.name",
    )?;
    let rows = statement.query_map([], version)?;
    Ok(rows
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect())
}

/// One row; `None` for a kind this version does not know (left alone).
fn version(row: &Row<'_>) -> Result<Option<DeployVersion>, rusqlite::Error> {
    let Some(kind) = kind_of(&row.get::<_, String>(1)?) else {
        return Ok(None);
    };
    let table = match (row.get::<_, Option<String>>(4)?, row.get::<_, bool>(5)?) {
        (Some(text), _) => DeployedTable::Table(serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e))
        })?),
        (None, false) => DeployedTable::Deleted,
        (None, true) => DeployedTable::File,
    };
    Ok(Some(DeployVersion {
        key: OverlayKey {
            app: row.get(0)?,
            kind,
            name: row.get(2)?,
        },
        version: row.get::<_, i64>(3)? as u64,
        table,
        created_ms: row.get(6)?,
    }))
}

#[cfg(test)]
mod tests {
    use crate::config::{OverlayKey, OverlayKind};
    use crate::store::CallStore;
    use crate::store::deploys::DeployedTable;
    use crate::store::embedded::EmbeddedStore;

    fn key(kind: OverlayKind, name: &str) -> OverlayKey {
        OverlayKey {
            app: "demo".to_owned(),
            kind,
            name: name.to_owned(),
        }
    }

    #[tokio::test]
    async fn versions_count_per_key_and_the_latest_of_each_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.db");
        let cube = key(OverlayKind::Function, "cube");
        let model = key(OverlayKind::Class, "cube");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            let one = serde_json::json!({"backend": "exec", "command": ["a"]});
            let two = serde_json::json!({"backend": "exec", "command": ["b"]});
            assert_eq!(
                store
                    .record_deploy(cube.clone(), DeployedTable::Table(one), 10)
                    .await
                    .unwrap(),
                1
            );
            assert_eq!(
                store
                    .record_deploy(cube.clone(), DeployedTable::Table(two), 20)
                    .await
                    .unwrap(),
                2
            );
            assert_eq!(
                store
                    .record_deploy(model.clone(), DeployedTable::File, 30)
                    .await
                    .unwrap(),
                1
            );
            assert_eq!(
                store
                    .record_deploy(cube.clone(), DeployedTable::Deleted, 40)
                    .await
                    .unwrap(),
                3
            );
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let versions = store.deploy_versions(cube.clone()).await.unwrap();
        let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
        assert_eq!(numbers, [1, 2, 3]);
        assert!(matches!(&versions[1].table, DeployedTable::Table(t) if t["command"][0] == "b"));
        assert_eq!(versions[1].created_ms, 20);
        assert_eq!(versions[2].table, DeployedTable::Deleted);
        let latest = store.latest_deploys().await.unwrap();
        let seen: Vec<(OverlayKind, u64)> =
            latest.iter().map(|v| (v.key.kind, v.version)).collect();
        assert_eq!(seen, [(OverlayKind::Class, 1), (OverlayKind::Function, 3)]);
        assert_eq!(latest[0].table, DeployedTable::File);
    }

    #[tokio::test]
    async fn a_layout_4_file_gets_the_deploys_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.db");
        drop(EmbeddedStore::open(&path).unwrap());
        {
            let connection = rusqlite::Connection::open(&path).unwrap();
            connection
                .execute_batch("DROP TABLE deploys; PRAGMA user_version = 4;")
                .unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        let cube = key(OverlayKind::Function, "cube");
        assert_eq!(
            store
                .record_deploy(cube.clone(), DeployedTable::Deleted, 1)
                .await
                .unwrap(),
            1
        );
        let connection = rusqlite::Connection::open(&path).unwrap();
        let layout: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(layout, 5);
    }
}
