//! The embedded store's spawned maps (layout 4): the map's row in `calls`
//! carries `map_inputs` (how many inputs it has) and stays `running`
//! until its last input ends; each input is a row of `map_inputs`. The
//! map ends (`succeeded`, with a summary of its inputs as its result, and
//! its webhook queued) in the same transaction as its last input.

use rusqlite::{Connection, params};

use super::writer::{self, Reply};
use crate::store::map::{ClaimedInput, InputEnded, MapInput, MapProgress, OpenMap, StoredInput};
use crate::store::{CallState, FailureKind, Inserted, NewCall, Outcome, StoreError, now_ms};

/// The inputs' table, created beside `calls` (by a layout-3 file too).
pub(super) const MAP_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS map_inputs (
    call_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    args TEXT,
    kwargs TEXT,
    result BLOB,
    error_kind TEXT,
    error_type TEXT,
    error_message TEXT,
    problem BLOB,
    PRIMARY KEY (call_id, idx)
);
CREATE INDEX IF NOT EXISTS map_inputs_queue ON map_inputs (call_id, idx) WHERE state = 0;
CREATE INDEX IF NOT EXISTS map_inputs_open ON map_inputs (call_id) WHERE state <= 1;
";

/// Adds `map_inputs` to a layout-3 `calls` table (written before spawned maps).
pub(super) fn add_map_column(writer: &Connection) -> Result<(), rusqlite::Error> {
    let has_it: bool = writer.query_row(
        "SELECT count(*) FROM pragma_table_info('calls') WHERE name = 'map_inputs'",
        [],
        |row| row.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_it {
        writer.execute_batch("ALTER TABLE calls ADD COLUMN map_inputs INTEGER")?;
    }
    Ok(())
}

/// A write of a map for the writer thread.
pub(crate) enum MapWrite {
    /// A new map and all its inputs; `i64` is when it expires should it end at once.
    Insert(Box<NewCall>, Vec<MapInput>, i64, Reply<Inserted>),
    /// Takes up to `usize` pending inputs of a running map to run.
    Claim(String, usize, Reply<Vec<ClaimedInput>>),
    /// An input's end; `i64` is when the map expires should it end with it.
    Finish(String, u64, Outcome, i64, Reply<InputEnded>),
    /// An input runs again: its attempt counted.
    Retrying(String, u64, Reply<bool>),
}

/// A map write's result, held until its transaction commits.
pub(super) enum MapAnswer {
    Inserted(Inserted),
    Claimed(Vec<ClaimedInput>),
    Finished(InputEnded),
    Retried(bool),
}

impl MapWrite {
    pub(super) fn answer(self, answer: MapAnswer) {
        fn send<T>(reply: Reply<T>, value: T) {
            let _ = reply.send(Ok(value));
        }
        match (self, answer) {
            (MapWrite::Insert(.., r), MapAnswer::Inserted(v)) => send(r, v),
            (MapWrite::Claim(.., r), MapAnswer::Claimed(v)) => send(r, v),
            (MapWrite::Finish(.., r), MapAnswer::Finished(v)) => send(r, v),
            (MapWrite::Retrying(.., r), MapAnswer::Retried(v)) => send(r, v),
            (write, _) => write.fail(StoreError::Io(
                "a map write got another write's answer".to_owned(),
            )),
        }
    }

    pub(super) fn fail(self, error: StoreError) {
        match self {
            MapWrite::Insert(.., r) => drop(r.send(Err(error))),
            MapWrite::Claim(.., r) => drop(r.send(Err(error))),
            MapWrite::Finish(.., r) => drop(r.send(Err(error))),
            MapWrite::Retrying(.., r) => drop(r.send(Err(error))),
        }
    }
}

/// Applies one map write in the writer's transaction.
pub(super) fn apply(tx: &Connection, write: &MapWrite) -> Result<MapAnswer, rusqlite::Error> {
    Ok(match write {
        MapWrite::Insert(call, inputs, expires, _) => {
            MapAnswer::Inserted(insert(tx, call, inputs, *expires)?)
        }
        MapWrite::Claim(id, limit, _) => MapAnswer::Claimed(claim(tx, id, *limit)?),
        MapWrite::Finish(id, index, outcome, expires, _) => {
            MapAnswer::Finished(finish(tx, id, *index, outcome, *expires)?)
        }
        MapWrite::Retrying(id, index, _) => MapAnswer::Retried(
            tx.prepare_cached(
                "UPDATE map_inputs SET attempt = attempt + 1 WHERE call_id = ?1 AND idx = ?2 AND state = 1",
            )?
            .execute(params![id, index])?
                == 1,
        ),
    })
}

/// Stores the map as a call (pending for the idempotency check, then
/// running: never taken by its function's queue of calls) and its inputs.
fn insert(
    tx: &Connection,
    call: &NewCall,
    inputs: &[MapInput],
    expires_ms: i64,
) -> Result<Inserted, rusqlite::Error> {
    let inserted = writer::insert(tx, call)?;
    if !matches!(inserted, Inserted::Created) {
        return Ok(inserted);
    }
    tx.prepare_cached("UPDATE calls SET state = 1, map_inputs = ?2 WHERE id = ?1")?
        .execute(params![call.id, inputs.len() as i64])?;
    let mut statement = tx.prepare_cached(
        "INSERT INTO map_inputs (call_id, idx, state, args, kwargs, problem)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (index, input) in inputs.iter().enumerate() {
        let index = index as i64;
        match input {
            MapInput::Arguments { args, kwargs } => statement.execute(params![
                call.id,
                index,
                CallState::Pending.code(),
                args,
                kwargs,
                None::<Vec<u8>>
            ])?,
            MapInput::Refused(problem) => statement.execute(params![
                call.id,
                index,
                CallState::Failed.code(),
                None::<String>,
                None::<String>,
                problem
            ])?,
        };
    }
    // No input to run (none, or all refused): the map has ended already.
    end_if_done(tx, &call.id, expires_ms)?;
    Ok(Inserted::Created)
}

/// Marks up to `limit` of a running map's pending inputs running, lowest
/// index first.
fn claim(tx: &Connection, id: &str, limit: usize) -> Result<Vec<ClaimedInput>, rusqlite::Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut claimed = tx
        .prepare_cached(
            "UPDATE map_inputs SET state = 1, attempt = attempt + 1
             WHERE call_id = ?1
               AND idx IN (SELECT idx FROM map_inputs WHERE call_id = ?1 AND state = 0
                           ORDER BY idx LIMIT ?2)
               AND EXISTS (SELECT 1 FROM calls WHERE id = ?1 AND state = 1)
             RETURNING idx, ifnull(args, '[]'), ifnull(kwargs, '{}'), attempt",
        )?
        .query_map(params![id, limit], |row| {
            Ok(ClaimedInput {
                index: row.get::<_, i64>(0)? as u64,
                args: row.get(1)?,
                kwargs: row.get(2)?,
                attempt: row.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_unstable_by_key(|input| input.index);
    Ok(claimed)
}

/// Records a running input's outcome (its arguments are dropped: no run
/// follows), and ends the map if it was its last open input.
fn finish(
    tx: &Connection,
    id: &str,
    index: u64,
    outcome: &Outcome,
    expires_ms: i64,
) -> Result<InputEnded, rusqlite::Error> {
    let (state, result, kind, error_type, message) = match outcome {
        Outcome::Succeeded(body) | Outcome::Answered { body, .. } => (
            CallState::Succeeded,
            Some(body.as_slice()),
            None,
            None,
            None,
        ),
        Outcome::Failed {
            kind,
            error_type,
            message,
        } => (
            CallState::Failed,
            None,
            Some(kind.as_str()),
            Some(error_type.as_str()),
            Some(message.as_str()),
        ),
        Outcome::TimedOut => (CallState::TimedOut, None, None, None, None),
    };
    let recorded =
        tx.prepare_cached(
            "UPDATE map_inputs SET state = ?3, result = ?4, error_kind = ?5, error_type = ?6,
                 error_message = ?7, args = NULL, kwargs = NULL
             WHERE call_id = ?1 AND idx = ?2 AND state = 1",
        )?
        .execute(params![
            id,
            index as i64,
            state.code(),
            result,
            kind,
            error_type,
            message
        ])? == 1;
    let map_ended = recorded && end_if_done(tx, id, expires_ms)?;
    Ok(InputEnded {
        recorded,
        map_ended,
    })
}

/// Ends a running map whose inputs have all ended: `succeeded`, with
/// `{"inputs", "succeeded", "failed"}` as its result, its webhook queued.
fn end_if_done(tx: &Connection, id: &str, expires_ms: i64) -> Result<bool, rusqlite::Error> {
    let open: bool = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM map_inputs WHERE call_id = ?1 AND state <= 1)",
        )?
        .query_row(params![id], |row| row.get(0))?;
    if open {
        return Ok(false);
    }
    let progress = progress(tx, id)?;
    let summary = serde_json::json!({
        "inputs": progress.inputs,
        "succeeded": progress.succeeded,
        "failed": progress.failed,
    })
    .to_string();
    let now = now_ms();
    let ended =
        tx.prepare_cached(
            "UPDATE calls SET state = ?2, result = ?3, finished_ms = ?4, expires_ms = ?5
             WHERE id = ?1 AND state = 1 AND map_inputs IS NOT NULL",
        )?
        .execute(params![
            id,
            CallState::Succeeded.code(),
            summary.as_bytes(),
            now,
            expires_ms
        ])? == 1;
    if ended {
        writer::queue_delivery(tx, id, now)?;
    }
    Ok(ended)
}

/// A map's inputs by state.
pub(super) fn progress(connection: &Connection, id: &str) -> Result<MapProgress, rusqlite::Error> {
    let mut progress = MapProgress::default();
    let mut statement = connection.prepare_cached(
        "SELECT state, count(*) FROM map_inputs WHERE call_id = ?1 GROUP BY state",
    )?;
    let mut rows = statement.query(params![id])?;
    while let Some(row) = rows.next()? {
        let count = row.get::<_, i64>(1)? as u64;
        progress.inputs += count;
        match CallState::from_code(row.get(0)?) {
            Some(CallState::Pending) => progress.pending += count,
            Some(CallState::Running) => progress.running += count,
            Some(CallState::Succeeded) => progress.succeeded += count,
            Some(CallState::Cancelled) => progress.cancelled += count,
            Some(CallState::Failed | CallState::TimedOut) | None => progress.failed += count,
        }
    }
    Ok(progress)
}

/// Up to `limit` of a map's inputs from index `from` on, in index order.
pub(super) fn page(
    connection: &Connection,
    id: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<StoredInput>, rusqlite::Error> {
    connection
        .prepare_cached(
            "SELECT idx, state, result, error_kind, error_type, error_message, problem
             FROM map_inputs WHERE call_id = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
        )?
        .query_map(
            params![id, from as i64, i64::try_from(limit).unwrap_or(i64::MAX)],
            |row| {
                let state = CallState::from_code(row.get(1)?).unwrap_or(CallState::Failed);
                let problem: Option<Vec<u8>> = row.get(6)?;
                let outcome = match state {
                    _ if problem.is_some() => None,
                    CallState::Succeeded => Some(Outcome::Succeeded(
                        row.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                    )),
                    CallState::Failed => Some(Outcome::Failed {
                        kind: FailureKind::parse(
                            &row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                        ),
                        error_type: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
                        message: row.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    }),
                    CallState::TimedOut => Some(Outcome::TimedOut),
                    _ => None,
                };
                Ok(StoredInput {
                    index: row.get::<_, i64>(0)? as u64,
                    state,
                    outcome,
                    problem,
                })
            },
        )?
        .collect()
}

/// Maps left running (with open inputs) by a previous process, oldest first.
pub(super) fn open_maps(connection: &Connection) -> Result<Vec<OpenMap>, rusqlite::Error> {
    connection
        .prepare_cached(
            "SELECT id, app, function FROM calls
             WHERE state = 1 AND map_inputs IS NOT NULL ORDER BY seq",
        )?
        .query_map([], |row| {
            Ok(OpenMap {
                id: row.get(0)?,
                app: row.get(1)?,
                function: row.get(2)?,
            })
        })?
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{EmbeddedStore, SCHEMA, SCHEMA_VERSION};
    use crate::store::map::{InputEnded, MapInput};
    use crate::store::{CallState, CallStore, Cancelled, Inserted, NewCall, Outcome, now_ms};

    fn map_call(id: &str) -> NewCall {
        NewCall {
            id: id.to_owned(),
            app: "demo".to_owned(),
            function: "square".to_owned(),
            args: "[]".to_owned(),
            kwargs: "{}".to_owned(),
            forward: None,
            principal: None,
            parameters: None,
            origin: None,
            owner: None,
            idempotency: Some(("key-1".to_owned(), vec![1])),
            callback_url: Some("https://hooks.example.com/done".to_owned()),
            state: CallState::Pending,
            created_ms: now_ms(),
        }
    }

    fn inputs(n: usize) -> Vec<MapInput> {
        (0..n)
            .map(|i| MapInput::Arguments {
                args: format!("[{i}]"),
                kwargs: "{}".to_owned(),
            })
            .collect()
    }

    fn open() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("calls.db")).unwrap();
        (dir, store)
    }

    const FAR: i64 = i64::MAX;

    #[tokio::test]
    async fn a_map_runs_its_inputs_in_batches_and_ends_with_its_last() {
        let (_dir, store) = open();
        let mut all = inputs(5);
        all[3] = MapInput::Refused(br#"{"status":400}"#.to_vec());
        let inserted = store
            .insert_map(map_call("fc-map"), all, FAR)
            .await
            .unwrap();
        assert!(matches!(inserted, Inserted::Created));
        let record = store.get("fc-map").await.unwrap().unwrap();
        assert_eq!(
            (record.state, record.map_inputs),
            (CallState::Running, Some(5))
        );
        // The map is never one of its function's pending calls.
        assert_eq!(store.pending(), 0);
        assert!(
            store
                .claim_batch("demo", "square", 10)
                .await
                .unwrap()
                .is_empty()
        );
        let first = store.claim_inputs("fc-map".into(), 2).await.unwrap();
        assert_eq!(
            first
                .iter()
                .map(|i| (i.index, i.attempt))
                .collect::<Vec<_>>(),
            vec![(0, 1), (1, 1)]
        );
        assert_eq!(first[1].args, "[1]");
        let rest = store.claim_inputs("fc-map".into(), 10).await.unwrap();
        assert_eq!(rest.iter().map(|i| i.index).collect::<Vec<_>>(), vec![2, 4]);
        let progress = store.map_progress("fc-map".into()).await.unwrap();
        assert_eq!(
            (progress.inputs, progress.running, progress.failed),
            (5, 4, 1)
        );
        for index in [0, 1, 2] {
            let ended = store
                .finish_input(
                    "fc-map".into(),
                    index,
                    Outcome::Succeeded(b"1".to_vec()),
                    FAR,
                )
                .await
                .unwrap();
            assert_eq!(
                ended,
                InputEnded {
                    recorded: true,
                    map_ended: false
                }
            );
        }
        assert!(
            store
                .due_deliveries(now_ms(), 10)
                .await
                .unwrap()
                .0
                .is_empty()
        );
        let last = store
            .finish_input("fc-map".into(), 4, Outcome::TimedOut, FAR)
            .await
            .unwrap();
        assert_eq!(
            last,
            InputEnded {
                recorded: true,
                map_ended: true
            }
        );
        let record = store.get("fc-map").await.unwrap().unwrap();
        assert_eq!(record.state, CallState::Succeeded);
        assert_eq!(
            record.outcome,
            Some(Outcome::Succeeded(
                br#"{"failed":2,"inputs":5,"succeeded":3}"#.to_vec()
            ))
        );
        // One webhook, for the map's end.
        assert_eq!(store.due_deliveries(now_ms(), 10).await.unwrap().0.len(), 1);
        let page = store.map_page("fc-map".into(), 3, 10).await.unwrap();
        assert_eq!(page.iter().map(|i| i.index).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(page[0].problem.as_deref(), Some(&br#"{"status":400}"#[..]));
        assert_eq!(page[1].outcome, Some(Outcome::TimedOut));
        // The same key finds the same map.
        let again = store
            .insert_map(map_call("fc-other"), inputs(1), FAR)
            .await
            .unwrap();
        assert!(
            matches!(again, Inserted::Existing { record, same_request: true } if record.id == "fc-map")
        );
    }

    #[tokio::test]
    async fn a_map_with_nothing_to_run_ends_at_once() {
        let (_dir, store) = open();
        store
            .insert_map(map_call("fc-empty"), Vec::new(), FAR)
            .await
            .unwrap();
        let record = store.get("fc-empty").await.unwrap().unwrap();
        assert_eq!(
            (record.state, record.map_inputs),
            (CallState::Succeeded, Some(0))
        );
    }

    #[tokio::test]
    async fn cancelling_a_map_cancels_its_open_inputs_and_no_more_are_claimed() {
        let (_dir, store) = open();
        store
            .insert_map(map_call("fc-map"), inputs(4), FAR)
            .await
            .unwrap();
        store.claim_inputs("fc-map".into(), 2).await.unwrap();
        store
            .finish_input("fc-map".into(), 0, Outcome::Succeeded(b"0".to_vec()), FAR)
            .await
            .unwrap();
        let answer = store.cancel("fc-map".into(), now_ms(), FAR).await.unwrap();
        assert_eq!(answer, Cancelled::Now(CallState::Running));
        let progress = store.map_progress("fc-map".into()).await.unwrap();
        assert_eq!((progress.succeeded, progress.cancelled), (1, 3));
        assert!(
            store
                .claim_inputs("fc-map".into(), 10)
                .await
                .unwrap()
                .is_empty()
        );
        // The running input's late end is not recorded over the cancel.
        let late = store
            .finish_input("fc-map".into(), 1, Outcome::Succeeded(b"1".to_vec()), FAR)
            .await
            .unwrap();
        assert!(!late.recorded && !late.map_ended);
    }

    #[tokio::test]
    async fn a_reopened_store_puts_running_inputs_back_and_the_map_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.db");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            store
                .insert_map(map_call("fc-map"), inputs(3), FAR)
                .await
                .unwrap();
            store.claim_inputs("fc-map".into(), 2).await.unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        store.recover().await.unwrap();
        let open = store.open_maps().await.unwrap();
        assert_eq!(
            open.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            vec!["fc-map"]
        );
        assert!(
            store
                .claim_batch("demo", "square", 10)
                .await
                .unwrap()
                .is_empty()
        );
        let again = store.claim_inputs("fc-map".into(), 10).await.unwrap();
        assert_eq!(
            again
                .iter()
                .map(|i| (i.index, i.attempt))
                .collect::<Vec<_>>(),
            vec![(0, 2), (1, 2), (2, 1)]
        );
        assert!(store.input_retrying("fc-map".into(), 2).await.unwrap());
    }

    #[tokio::test]
    async fn an_expired_map_is_swept_with_its_inputs() {
        let (_dir, store) = open();
        store
            .insert_map(map_call("fc-map"), inputs(2), 1)
            .await
            .unwrap();
        store.cancel("fc-map".into(), now_ms(), 1).await.unwrap();
        assert_eq!(store.sweep(now_ms()).await.unwrap(), 1);
        let progress = store.map_progress("fc-map".into()).await.unwrap();
        assert_eq!(progress.inputs, 0);
    }

    #[tokio::test]
    async fn a_layout_3_store_gains_the_maps_column_and_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.db");
        {
            // Layout 3: `calls` without `map_inputs`, and no inputs' table.
            let connection = rusqlite::Connection::open(&path).unwrap();
            let old = SCHEMA.replace(",\n    map_inputs INTEGER", "");
            assert_ne!(
                old, SCHEMA,
                "layout 3 is layout 4's calls without one column"
            );
            connection.execute_batch(&old).unwrap();
            connection.pragma_update(None, "user_version", 3).unwrap();
            connection
                .execute(
                    "INSERT INTO calls (id, app, function, args, kwargs, state, attempt, created_ms)
                     VALUES ('fc-old', 'demo', 'square', '[]', '{}', 1, 1, 0)",
                    [],
                )
                .unwrap();
        }
        let store = EmbeddedStore::open(&path).unwrap();
        store.recover().await.unwrap();
        let old = store.get("fc-old").await.unwrap().unwrap();
        assert_eq!((old.state, old.map_inputs), (CallState::Pending, None));
        store
            .insert_map(map_call("fc-map"), inputs(2), FAR)
            .await
            .unwrap();
        assert_eq!(
            store.claim_inputs("fc-map".into(), 5).await.unwrap().len(),
            2
        );
        let version: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
