//! The embedded store: one SQLite file in WAL mode. One writer thread
//! batches every write that is waiting into a single transaction (group
//! commit), so many concurrent spawns share one fsync; readers use their
//! own connections and never wait for the writer. The writer also keeps
//! the count of pending calls, in step with what it commits.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    BoxFuture, CallRecord, CallState, CallStore, Cancelled, Delivery, Due, FailureKind, Inserted,
    NewCall, Outcome, PendingCounts, StoreError,
};

mod writer;

use writer::{Reply, Write, write_loop};

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 1024;

/// The layout `SCHEMA` describes, recorded in the file's `user_version`.
const SCHEMA_VERSION: i64 = 1;

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
    principal TEXT
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
         from_sync, forward, result_status, result_type, principal"
    };
}

const COLUMNS: &str = columns!();

const GET_BY_ID: &str = concat!("SELECT ", columns!(), " FROM calls WHERE id = ?1");

pub struct EmbeddedStore {
    writes: mpsc::Sender<Write>,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    /// Pending calls as of the last commit; only the writer thread changes it.
    pending: Arc<AtomicU64>,
}

impl EmbeddedStore {
    /// Opens (creating when needed) the store at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display())))?;
        }
        let writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", "FULL")?;
        writer.busy_timeout(std::time::Duration::from_secs(10))?;
        // A file written by another layout fails here, at start-up, with
        // what to do, instead of failing every spawn later.
        let layout = writer.execute_batch(SCHEMA).and_then(|()| {
            writer
                .prepare(&format!(
                    "SELECT {COLUMNS}, idem_key, idem_hash FROM calls LIMIT 0"
                ))
                .map(drop)
        });
        if let Err(e) = layout {
            return Err(StoreError::Io(format!(
                "{} was written by another version of fngate's store ({e}); move it away to start afresh",
                path.display()
            )));
        }
        writer.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        let pending: i64 =
            writer.query_row("SELECT count(*) FROM calls WHERE state = 0", [], |row| {
                row.get(0)
            })?;
        let pending = Arc::new(AtomicU64::new(pending as u64));
        let (writes, queue) = mpsc::channel(MAX_BATCH * 4);
        let count = pending.clone();
        std::thread::Builder::new()
            .name("fngate-store-writer".into())
            .spawn(move || write_loop(writer, queue, &count))
            .map_err(|e| StoreError::Io(format!("starting the writer thread: {e}")))?;
        Ok(EmbeddedStore {
            writes,
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
            pending,
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
                let connection = Connection::open(&self.path)?;
                connection.busy_timeout(std::time::Duration::from_secs(10))?;
                connection.pragma_update(None, "query_only", true)?;
                Ok(connection)
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
        Ok(result?)
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
        Ok(result?)
    }
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
}

#[cfg(test)]
mod tests;
