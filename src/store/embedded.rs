//! The embedded store: one SQLite file in WAL mode. One writer thread
//! batches every write that is waiting into a single transaction (group
//! commit), so many concurrent spawns share one fsync; readers use their
//! own connections and never wait for the writer. The writer also keeps
//! the count of pending calls, in step with what it commits.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::{mpsc, oneshot};

use super::map::{ClaimedInput, InputEnded, MapInput, MapProgress, OpenMap, StoredInput};
use super::{
    BoxFuture, CallRecord, CallState, CallStore, Cancelled, Delivery, Due, FailureKind, Inserted,
    NewCall, Origin, Outcome, PendingCounts, StoreError, StoreHealth,
};

mod call_writes;
mod deploys;
mod faults;
mod maps;
mod startup;
mod writer;

use faults::{Fault, FileHealth, fault_of};
use startup::{prepare, refuse_lost_journal};
use writer::{Reply, Write, Writer, write_loop};

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 1024;

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The layout `SCHEMA` describes, recorded in the file's `user_version`.
const SCHEMA_VERSION: i64 = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS calls (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    app TEXT NOT NULL,
    function TEXT NOT NULL,
    args TEXT NOT NULL,
    kwargs TEXT NOT NULL,
    owner TEXT,
    idem_key TEXT,
    idem_hash BLOB,
    callback_url TEXT,
    state INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    expires_ms INTEGER,
    result BLOB,
    error_kind TEXT,
    error_type TEXT,
    error_message TEXT,
    from_sync INTEGER NOT NULL DEFAULT 0,
    forward BLOB,
    result_status INTEGER,
    result_type TEXT,
    principal TEXT,
    parameters TEXT,
    parent_call_id TEXT,
    origin TEXT,
    map_inputs INTEGER
);
CREATE INDEX IF NOT EXISTS calls_queue ON calls (app, function, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS calls_expiry ON calls (expires_ms) WHERE expires_ms IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS calls_idempotency
    ON calls (app, function, ifnull(owner, ''), idem_key) WHERE idem_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS deliveries (
    call_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_ms);
";

/// The columns of a call record, in the order `record` reads them.
macro_rules! columns {
    () => {
        "id, app, function, args, kwargs, owner, callback_url, state, attempt, created_ms, \
         started_ms, finished_ms, expires_ms, result, error_kind, error_type, error_message, \
         from_sync, forward, result_status, result_type, principal, parameters, parent_call_id, \
         origin, map_inputs"
    };
}

const COLUMNS: &str = columns!();

/// How many columns `COLUMNS` names: a query that selects more after them
/// finds the first at this index.
const COLUMN_COUNT: usize = 26;

const GET_BY_ID: &str = concat!("SELECT ", columns!(), " FROM calls WHERE id = ?1");

pub struct EmbeddedStore {
    writes: mpsc::Sender<Write>,
    readers: Mutex<Vec<Connection>>,
    /// Pending calls as of the last commit; only the writer thread changes it.
    pending: Arc<AtomicU64>,
    /// The file, and whether it failed for good.
    health: Arc<FileHealth>,
}

/// The upkeep of an embedded store; `Default` is what the gateway runs with.
#[derive(Debug, Clone)]
pub struct Maintenance {
    /// How long the start-up `PRAGMA quick_check` may take. Past it the
    /// check is abandoned with a warning and the store starts unchecked: a
    /// huge file must not hold the start-up for minutes, and corruption
    /// the check did not reach is still found by the first read or write
    /// that meets it.
    pub check_budget: Duration,
    /// How often the writer checkpoints the WAL into the database and
    /// truncates it, when anything was written since the last time (or the
    /// last checkpoint failed): a WAL left at its largest holds disk space
    /// a small filesystem needs back.
    pub checkpoint_every: Duration,
}

impl Default for Maintenance {
    fn default() -> Maintenance {
        Maintenance {
            check_budget: Duration::from_secs(10),
            checkpoint_every: Duration::from_secs(5),
        }
    }
}

impl EmbeddedStore {
    /// Opens (creating when needed) the store at `path`, checks it, and
    /// starts its writer thread.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(path, &Maintenance::default())
    }

    /// [`EmbeddedStore::open`] with other upkeep settings. Every error
    /// names the file.
    pub fn open_with(path: &Path, maintenance: &Maintenance) -> Result<EmbeddedStore, StoreError> {
        let named = |why: String| StoreError::Open {
            path: path.to_owned(),
            why,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| named(format!("creating its folder {}: {e}", dir.display())))?;
        }
        refuse_lost_journal(path).map_err(named)?;
        let (writer, pending) = prepare(path, maintenance.check_budget).map_err(named)?;
        let pending = Arc::new(AtomicU64::new(pending));
        let health = Arc::new(FileHealth {
            file: path.to_owned(),
            health: StoreHealth::default(),
        });
        let (writes, queue) = mpsc::channel(MAX_BATCH * 4);
        let writer = Writer::new(writer, pending.clone(), health.clone());
        let watched = health.clone();
        std::thread::Builder::new()
            .name("fngate-store-writer".into())
            .spawn(move || {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    write_loop(writer, queue)
                }));
                if ran.is_err() {
                    watched.fail("its writer thread panicked".to_owned());
                }
            })
            .map_err(|e| named(format!("starting the writer thread: {e}")))?;
        tick_checkpoints(writes.downgrade(), maintenance.checkpoint_every)
            .map_err(|e| named(format!("starting the checkpoint timer: {e}")))?;
        Ok(EmbeddedStore {
            writes,
            readers: Mutex::new(Vec::new()),
            pending,
            health,
        })
    }

    async fn write<T>(&self, make: impl FnOnce(Reply<T>) -> Write) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn reader(&self) -> Result<Connection, StoreError> {
        let pooled = self
            .readers
            .lock()
            .expect("reader pool lock is never poisoned")
            .pop();
        match pooled {
            Some(connection) => Ok(connection),
            None => {
                // Never creating it: a file gone from under a running
                // store must not come back empty.
                let open = || {
                    let flags =
                        rusqlite::OpenFlags::default() - rusqlite::OpenFlags::SQLITE_OPEN_CREATE;
                    let connection = Connection::open_with_flags(&self.health.file, flags)?;
                    connection.busy_timeout(BUSY_TIMEOUT)?;
                    startup::stable_plans(&connection)?;
                    connection.pragma_update(None, "query_only", true)?;
                    Ok(connection)
                };
                open().map_err(|e| self.health.error(e))
            }
        }
    }

    /// Runs a point read on the calling thread. A lookup by primary key in
    /// a WAL database (readers never wait for the writer) takes
    /// microseconds, less than handing it to the blocking pool and back;
    /// `GET /calls/{id}` is the hot read.
    fn read_here<T>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
    ) -> Result<T, StoreError> {
        let connection = self.reader()?;
        let result = query(&connection);
        self.readers
            .lock()
            .expect("reader pool lock is never poisoned")
            .push(connection);
        result.map_err(|e| self.health.error(e))
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = self.reader()?;
        let (connection, result) = tokio::task::spawn_blocking(move || {
            let result = query(&connection);
            (connection, result)
        })
        .await
        .map_err(|e| StoreError::Io(format!("reader task: {e}")))?;
        self.readers
            .lock()
            .expect("reader pool lock is never poisoned")
            .push(connection);
        result.map_err(|e| self.health.error(e))
    }
}

/// Asks the writer for a checkpoint every `every`, until the store is gone
/// (the timer holds no sender that would keep the writer alive).
fn tick_checkpoints(writes: mpsc::WeakSender<Write>, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("fngate-store-checkpoint".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(writes) = writes.upgrade() else {
                    return;
                };
                // A full queue means a busy writer: the next tick will do.
                let _ = writes.try_send(Write::Checkpoint);
            }
        })
        .map(drop)
}

fn record(row: &Row<'_>) -> Result<CallRecord, rusqlite::Error> {
    let state = CallState::from_code(row.get(7)?).unwrap_or(CallState::Failed);
    let outcome = match state {
        CallState::Succeeded => {
            let body = row.get::<_, Option<Vec<u8>>>(13)?.unwrap_or_default();
            Some(match row.get::<_, Option<u16>>(19)? {
                Some(status) => Outcome::Answered {
                    status,
                    content_type: row.get(20)?,
                    body,
                },
                None => Outcome::Succeeded(body),
            })
        }
        CallState::Failed => Some(Outcome::Failed {
            kind: FailureKind::parse(&row.get::<_, Option<String>>(14)?.unwrap_or_default()),
            error_type: row.get::<_, Option<String>>(15)?.unwrap_or_default(),
            message: row.get::<_, Option<String>>(16)?.unwrap_or_default(),
        }),
        CallState::TimedOut => Some(Outcome::TimedOut),
        _ => None,
    };
    Ok(CallRecord {
        id: row.get(0)?,
        app: row.get(1)?,
        function: row.get(2)?,
        args: row.get(3)?,
        kwargs: row.get(4)?,
        owner: row.get(5)?,
        callback_url: row.get(6)?,
        state,
        attempt: row.get(8)?,
        created_ms: row.get(9)?,
        started_ms: row.get(10)?,
        finished_ms: row.get(11)?,
        expires_ms: row.get(12)?,
        outcome,
        from_sync: row.get(17)?,
        forward: row.get(18)?,
        principal: row
            .get::<_, Option<String>>(21)?
            .and_then(|text| serde_json::from_str(&text).ok()),
        parameters: row.get(22)?,
        origin: match (
            row.get::<_, Option<String>>(23)?,
            row.get::<_, Option<String>>(24)?,
        ) {
            (None, None) => None,
            (parent_call_id, origin) => Some(Origin {
                parent_call_id,
                ..origin
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .unwrap_or_default()
            }),
        },
        map_inputs: row.get::<_, Option<i64>>(25)?.map(|n| n as u64),
    })
}

impl CallStore for EmbeddedStore {
    fn insert(&self, call: NewCall) -> BoxFuture<'_, Result<Inserted, StoreError>> {
        Box::pin(self.write(move |reply| Write::Insert(call, reply)))
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<CallRecord>, StoreError>> {
        let found = self.read_here(|connection| {
            connection
                .prepare_cached(GET_BY_ID)?
                .query_row(params![id], record)
                .optional()
        });
        Box::pin(std::future::ready(found))
    }

    fn claim_batch<'a>(
        &'a self,
        app: &'a str,
        function: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<CallRecord>, StoreError>> {
        let (app, function) = (app.to_owned(), function.to_owned());
        Box::pin(self.write(move |reply| Write::Claim(app, function, limit, reply)))
    }

    fn has_pending<'a>(
        &'a self,
        app: &'a str,
        function: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (app, function) = (app.to_owned(), function.to_owned());
        Box::pin(self.read(move |connection| {
            connection
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM calls WHERE app = ?1 AND function = ?2 AND state = 0)",
                )?
                .query_row(params![app, function], |row| row.get(0))
        }))
    }

    fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    fn count_by_state(&self) -> BoxFuture<'_, Result<Vec<(CallState, u64)>, StoreError>> {
        Box::pin(self.read(|connection| {
            let mut statement =
                connection.prepare_cached("SELECT state, COUNT(*) FROM calls GROUP BY state")?;
            let rows = statement
                .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?)))?;
            let mut counts = Vec::new();
            for row in rows {
                let (code, count) = row?;
                if let Some(state) = CallState::from_code(code) {
                    counts.push((state, u64::try_from(count).unwrap_or(0)));
                }
            }
            Ok(counts)
        }))
    }

    fn record_deploy(
        &self,
        key: crate::config::OverlayKey,
        table: super::deploys::DeployedTable,
        created_ms: i64,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.write(move |reply| {
            Write::Deploy(deploys::DeployWrite {
                key,
                table,
                created_ms,
                reply,
            })
        }))
    }

    fn deploy_versions(
        &self,
        key: crate::config::OverlayKey,
    ) -> BoxFuture<'_, Result<Vec<super::deploys::DeployVersion>, StoreError>> {
        Box::pin(self.read(move |connection| deploys::versions(connection, &key)))
    }

    fn latest_deploys(
        &self,
    ) -> BoxFuture<'_, Result<Vec<super::deploys::DeployVersion>, StoreError>> {
        Box::pin(self.read(deploys::latest))
    }

    fn finish(
        &self,
        id: String,
        outcome: Outcome,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.write(move |reply| Write::Finish(id, outcome, expires_ms, reply)))
    }

    fn cancel(
        &self,
        id: String,
        now_ms: i64,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<Cancelled, StoreError>> {
        Box::pin(self.write(move |reply| Write::Cancel(id, now_ms, expires_ms, reply)))
    }

    fn requeue(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.write(move |reply| Write::Requeue(id, reply)))
    }

    fn retrying(&self, id: String) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.write(move |reply| Write::Retrying(id, reply)))
    }

    fn recover(&self) -> BoxFuture<'_, Result<PendingCounts, StoreError>> {
        Box::pin(self.write(Write::Recover))
    }

    fn sweep(&self, now_ms: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.write(move |reply| Write::Sweep(now_ms, reply)))
    }

    fn due_deliveries(&self, now_ms: i64, limit: usize) -> BoxFuture<'_, Result<Due, StoreError>> {
        Box::pin(self.read(move |connection| {
            let due = connection
                .prepare_cached(
                    "SELECT call_id, url, attempts FROM deliveries WHERE next_ms <= ?1 ORDER BY next_ms LIMIT ?2",
                )?
                .query_map(params![now_ms, limit as i64], |row| {
                    Ok(Delivery {
                        call_id: row.get(0)?,
                        url: row.get(1)?,
                        attempts: row.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let next = connection
                .prepare_cached("SELECT min(next_ms) FROM deliveries WHERE next_ms > ?1")?
                .query_row(params![now_ms], |row| row.get::<_, Option<i64>>(0))?;
            Ok((due, next))
        }))
    }

    fn delivery_attempted(
        &self,
        call_id: String,
        attempts: u32,
        retry_at: Option<i64>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(
            self.write(move |reply| Write::DeliveryAttempted(call_id, attempts, retry_at, reply)),
        )
    }

    fn health(&self) -> &StoreHealth {
        &self.health.health
    }

    fn insert_map(
        &self,
        call: NewCall,
        inputs: Vec<MapInput>,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<Inserted, StoreError>> {
        Box::pin(self.write(move |reply| {
            Write::Map(maps::MapWrite::Insert(
                Box::new(call),
                inputs,
                expires_ms,
                reply,
            ))
        }))
    }

    fn claim_inputs(
        &self,
        id: String,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ClaimedInput>, StoreError>> {
        Box::pin(self.write(move |reply| Write::Map(maps::MapWrite::Claim(id, limit, reply))))
    }

    fn finish_input(
        &self,
        id: String,
        index: u64,
        outcome: Outcome,
        expires_ms: i64,
    ) -> BoxFuture<'_, Result<InputEnded, StoreError>> {
        Box::pin(self.write(move |reply| {
            Write::Map(maps::MapWrite::Finish(
                id, index, outcome, expires_ms, reply,
            ))
        }))
    }

    fn input_retrying(&self, id: String, index: u64) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.write(move |reply| Write::Map(maps::MapWrite::Retrying(id, index, reply))))
    }

    fn map_progress(&self, id: String) -> BoxFuture<'_, Result<MapProgress, StoreError>> {
        Box::pin(self.read(move |connection| maps::progress(connection, &id)))
    }

    fn map_page(
        &self,
        id: String,
        from: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredInput>, StoreError>> {
        Box::pin(self.read(move |connection| maps::page(connection, &id, from, limit)))
    }

    fn open_maps(&self) -> BoxFuture<'_, Result<Vec<OpenMap>, StoreError>> {
        Box::pin(self.read(maps::open_maps))
    }
}

#[cfg(test)]
mod tests;
