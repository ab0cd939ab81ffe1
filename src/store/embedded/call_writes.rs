//! The SQL of the writes to spawned calls (insert, claim, finish, cancel,
//! recover, sweep, webhook deliveries), each run by the writer thread
//! inside its batch's transaction; the writer itself is in `writer`.

use rusqlite::{Connection, OptionalExtension, params};

use super::{COLUMN_COUNT, COLUMNS, record};
use crate::store::{
    CallRecord, CallState, Cancelled, Inserted, NewCall, Outcome, PendingCounts, now_ms,
};

pub(super) fn insert(tx: &Connection, call: &NewCall) -> Result<Inserted, rusqlite::Error> {
    let (idem_key, idem_hash) = match &call.idempotency {
        Some((key, hash)) => (Some(key.as_str()), Some(hash.as_slice())),
        None => (None, None),
    };
    let started = (call.state == CallState::Running).then_some(call.created_ms);
    let attempt = u32::from(call.state == CallState::Running);
    let mut statement = tx.prepare_cached(
        "INSERT INTO calls (id, app, function, args, kwargs, owner, idem_key, idem_hash, callback_url, state, attempt,
             created_ms, started_ms, from_sync, forward, principal, parameters, parent_call_id, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
         ON CONFLICT DO NOTHING",
    )?;
    let added = statement.execute(params![
        call.id,
        call.app,
        call.function,
        call.args,
        call.kwargs,
        call.owner,
        idem_key,
        idem_hash,
        call.callback_url,
        call.state.code(),
        attempt,
        call.created_ms,
        started,
        call.from_sync,
        call.forward,
        call.principal
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("a principal always serialises")),
        call.parameters,
        call.origin
            .as_ref()
            .and_then(|o| o.parent_call_id.as_deref()),
        call.origin
            .as_ref()
            .map(|n| serde_json::to_string(n).expect("a call's origin always serialises")),
    ])?;
    if added == 1 {
        return Ok(Inserted::Created);
    }
    let Some(key) = idem_key else {
        let constraint = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT);
        return Err(rusqlite::Error::SqliteFailure(
            constraint,
            Some(format!("call id {} is taken", call.id)),
        ));
    };
    let existing = tx
        .query_row(
            &format!(
                "SELECT {COLUMNS}, idem_hash FROM calls
                 WHERE app = ?1 AND function = ?2 AND ifnull(owner, '') = ifnull(?3, '') AND idem_key = ?4"
            ),
            params![call.app, call.function, call.owner, key],
            |row| Ok((record(row)?, row.get::<_, Option<Vec<u8>>>(COLUMN_COUNT)?)),
        )
        .optional()?;
    match existing {
        Some((record, _)) if record.is_expired(now_ms()) => {
            // The key expired with its call: the key is free again.
            tx.execute("DELETE FROM calls WHERE id = ?1", params![record.id])?;
            tx.execute(
                "DELETE FROM deliveries WHERE call_id = ?1",
                params![record.id],
            )?;
            tx.execute(
                "DELETE FROM map_inputs WHERE call_id = ?1",
                params![record.id],
            )?;
            insert(tx, call)
        }
        Some((record, hash)) => Ok(Inserted::Existing {
            same_request: hash.as_deref() == idem_hash,
            record: Box::new(record),
        }),
        None => Err(rusqlite::Error::QueryReturnedNoRows),
    }
}

/// Marks up to `limit` of a function's oldest pending calls running.
/// (RETURNING gives rows in no set order: they are sorted by `seq`.)
pub(super) fn claim(
    tx: &Connection,
    app: &str,
    function: &str,
    limit: usize,
) -> Result<Vec<CallRecord>, rusqlite::Error> {
    let mut statement = tx.prepare_cached(&format!(
        "UPDATE calls SET state = 1, attempt = attempt + 1, started_ms = ?3
         WHERE seq IN (SELECT seq FROM calls WHERE app = ?1 AND function = ?2 AND state = 0
                       ORDER BY seq LIMIT ?4)
         RETURNING {COLUMNS}, seq"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut claimed = statement
        .query_map(params![app, function, now_ms(), limit], |row| {
            Ok((row.get::<_, i64>(COLUMN_COUNT)?, record(row)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(claimed.into_iter().map(|(_, record)| record).collect())
}

pub(super) fn finish(
    tx: &Connection,
    id: &str,
    outcome: &Outcome,
    expires_ms: i64,
) -> Result<bool, rusqlite::Error> {
    let mut answer: (Option<u16>, Option<&str>) = (None, None);
    let (state, result, kind, error_type, message) = match outcome {
        Outcome::Succeeded(body) => (
            CallState::Succeeded,
            Some(body.as_slice()),
            None,
            None,
            None,
        ),
        Outcome::Answered {
            status,
            content_type,
            body,
        } => {
            answer = (Some(*status), content_type.as_deref());
            (
                CallState::Succeeded,
                Some(body.as_slice()),
                None,
                None,
                None,
            )
        }
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
    let now = now_ms();
    let changed = tx
        .prepare_cached(
            "UPDATE calls SET state = ?2, result = ?3, error_kind = ?4, error_type = ?5, error_message = ?6,
                 finished_ms = ?7, expires_ms = ?8, result_status = ?9, result_type = ?10
             WHERE id = ?1 AND state = 1",
        )?
        .execute(params![
            id,
            state.code(),
            result,
            kind,
            error_type,
            message,
            now,
            expires_ms,
            answer.0,
            answer.1
        ])?;
    if changed == 1 {
        queue_delivery(tx, id, now)?;
    }
    Ok(changed == 1)
}

/// Queues the webhook delivery of a call that ended, if it named a
/// callback. (One point read: most calls name none. An `UPDATE ...
/// RETURNING` of the URL costs twice a plain update and this read.)
pub(super) fn queue_delivery(tx: &Connection, id: &str, now: i64) -> Result<(), rusqlite::Error> {
    let callback: Option<String> = tx
        .prepare_cached("SELECT callback_url FROM calls WHERE id = ?1")?
        .query_row(params![id], |row| row.get(0))
        .optional()?
        .flatten();
    if let Some(url) = callback {
        tx.prepare_cached(
            "INSERT OR IGNORE INTO deliveries (call_id, url, attempts, next_ms) VALUES (?1, ?2, 0, ?3)",
        )?
        .execute(params![id, url, now])?;
    }
    Ok(())
}

pub(super) fn cancel(
    tx: &Connection,
    id: &str,
    now: i64,
    expires_ms: i64,
) -> Result<Cancelled, rusqlite::Error> {
    let state: Option<(i64, Option<i64>)> = tx
        .prepare_cached("SELECT state, expires_ms FROM calls WHERE id = ?1")?
        .query_row(params![id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((code, expires)) = state else {
        return Ok(Cancelled::NotFound);
    };
    if expires.is_some_and(|e| e <= now) {
        return Ok(Cancelled::NotFound);
    }
    let state = CallState::from_code(code).unwrap_or(CallState::Failed);
    if state.is_finished() {
        return Ok(Cancelled::AlreadyFinished(state));
    }
    tx.prepare_cached(
        "UPDATE calls SET state = 5, finished_ms = ?2, expires_ms = ?3 WHERE id = ?1",
    )?
    .execute(params![id, now, expires_ms])?;
    // A map's inputs that had not ended are cancelled with it.
    tx.prepare_cached("UPDATE map_inputs SET state = 5 WHERE call_id = ?1 AND state <= 1")?
        .execute(params![id])?;
    queue_delivery(tx, id, now)?;
    Ok(Cancelled::Now(state))
}

pub(super) fn recover(tx: &Connection) -> Result<PendingCounts, rusqlite::Error> {
    // A map stays running while it has open inputs: its inputs go back
    // to pending, not the map itself.
    let requeued = tx.execute(
        "UPDATE calls SET state = 0 WHERE state = 1 AND map_inputs IS NULL",
        [],
    )?;
    let inputs = tx.execute("UPDATE map_inputs SET state = 0 WHERE state = 1", [])?;
    if inputs > 0 {
        tracing::warn!(
            inputs,
            "map inputs left running by the previous process will run again"
        );
    }
    if requeued > 0 {
        tracing::warn!(
            calls = requeued,
            "calls left running by the previous process will run again"
        );
    }
    let mut statement = tx.prepare(
        "SELECT app, function, count(*) FROM calls WHERE state = 0 GROUP BY app, function",
    )?;
    statement
        .query_map([], |row| {
            Ok(((row.get(0)?, row.get(1)?), row.get::<_, i64>(2)? as u64))
        })?
        .collect()
}

pub(super) fn sweep(tx: &Connection, now: i64) -> Result<u64, rusqlite::Error> {
    tx.execute(
        "DELETE FROM deliveries WHERE call_id IN (SELECT id FROM calls WHERE expires_ms <= ?1)",
        params![now],
    )?;
    tx.execute(
        "DELETE FROM map_inputs WHERE call_id IN (SELECT id FROM calls WHERE expires_ms <= ?1)",
        params![now],
    )?;
    Ok(tx.execute("DELETE FROM calls WHERE expires_ms <= ?1", params![now])? as u64)
}

pub(super) fn delivery_attempted(
    tx: &Connection,
    id: &str,
    attempts: u32,
    retry_at: Option<i64>,
) -> Result<(), rusqlite::Error> {
    match retry_at {
        Some(at) => tx.execute(
            "UPDATE deliveries SET attempts = ?2, next_ms = ?3 WHERE call_id = ?1",
            params![id, attempts, at],
        )?,
        None => tx.execute("DELETE FROM deliveries WHERE call_id = ?1", params![id])?,
    };
    Ok(())
}
