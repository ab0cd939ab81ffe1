//! The embedded store's spawned maps (layout 4): the map's row in `calls`
//! carries `map_inputs` (how many inputs it has) and stays `running`
//! until its last input ends; each input is a row of `map_inputs`. The
//! map ends (`succeeded`, with a summary of its inputs as its result, and
//! its webhook queued) in the same transaction as its last input.

use rusqlite::{Connection, params};

use super::call_writes;
use super::writer::Reply;
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
    let inserted = call_writes::insert(tx, call)?;
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
        call_writes::queue_delivery(tx, id, now)?;
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
mod tests;
