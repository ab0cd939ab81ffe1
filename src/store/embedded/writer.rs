//! The embedded store's writer: the writes callers queue, the thread that
//! applies every waiting one in a single transaction (group commit), and
//! the SQL of each write.

use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::{COLUMNS, MAX_BATCH, record};
use crate::store::{
    CallRecord, CallState, Cancelled, Inserted, NewCall, Outcome, PendingCounts, StoreError, now_ms,
};

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write for the writer thread. (Moved once through a channel; boxing
/// the large variant would cost an allocation per spawn for nothing.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Write {
    Insert(NewCall, Reply<Inserted>),
    Claim(String, String, usize, Reply<Vec<CallRecord>>),
    Finish(String, Outcome, i64, Reply<bool>),
    Cancel(String, i64, i64, Reply<Cancelled>),
    Recover(Reply<PendingCounts>),
    Sweep(i64, Reply<u64>),
    DeliveryAttempted(String, u32, Option<i64>, Reply<()>),
}

/// A write's result, held until its transaction commits. (Short-lived and
/// batched by the thousand at most: its size does not matter.)
#[allow(clippy::large_enum_variant)]
enum Done {
    Insert(Reply<Inserted>, Result<Inserted, StoreError>),
    Claim(Reply<Vec<CallRecord>>, Result<Vec<CallRecord>, StoreError>),
    Finish(Reply<bool>, Result<bool, StoreError>),
    Cancel(Reply<Cancelled>, Result<Cancelled, StoreError>),
    Recover(Reply<PendingCounts>, Result<PendingCounts, StoreError>),
    Sweep(Reply<u64>, Result<u64, StoreError>),
    DeliveryAttempted(Reply<()>, Result<(), StoreError>),
}

impl Done {
    /// Answers the caller; after a failed commit every answer is the error.
    fn send(self, failed_commit: Option<&str>) {
        fn answer<T>(
            reply: oneshot::Sender<Result<T, StoreError>>,
            result: Result<T, StoreError>,
            failed: Option<&str>,
        ) {
            let result = match failed {
                Some(why) => Err(StoreError::Io(format!("commit failed: {why}"))),
                None => result,
            };
            let _ = reply.send(result);
        }
        match self {
            Done::Insert(r, v) => answer(r, v, failed_commit),
            Done::Claim(r, v) => answer(r, v, failed_commit),
            Done::Finish(r, v) => answer(r, v, failed_commit),
            Done::Cancel(r, v) => answer(r, v, failed_commit),
            Done::Recover(r, v) => answer(r, v, failed_commit),
            Done::Sweep(r, v) => answer(r, v, failed_commit),
            Done::DeliveryAttempted(r, v) => answer(r, v, failed_commit),
        }
    }
}

/// Applies every waiting write in one transaction and answers them after
/// the commit. `pending` follows the writes and is published only once
/// they are committed.
pub(super) fn write_loop(
    mut connection: Connection,
    mut queue: mpsc::Receiver<Write>,
    pending: &AtomicU64,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let transaction = match connection.transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(transaction) => transaction,
            Err(e) => {
                let why = e.to_string();
                tracing::error!(error = %why, "call store: cannot begin a transaction");
                for write in batch {
                    apply_failed(write, &why);
                }
                continue;
            }
        };
        let mut count = pending.load(Ordering::Acquire);
        let done: Vec<Done> = batch
            .into_iter()
            .map(|write| apply(&transaction, write, &mut count))
            .collect();
        match transaction.commit() {
            Ok(()) => {
                pending.store(count, Ordering::Release);
                done.into_iter().for_each(|d| d.send(None));
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(error = %why, "call store: commit failed");
                done.into_iter().for_each(|d| d.send(Some(&why)));
            }
        }
    }
}

fn apply_failed(write: Write, why: &str) {
    fn fail<T>(reply: Reply<T>, why: &str) {
        let _ = reply.send(Err(StoreError::Io(why.to_owned())));
    }
    match write {
        Write::Insert(_, r) => fail(r, why),
        Write::Claim(_, _, _, r) => fail(r, why),
        Write::Finish(_, _, _, r) => fail(r, why),
        Write::Cancel(_, _, _, r) => fail(r, why),
        Write::Recover(r) => fail(r, why),
        Write::Sweep(_, r) => fail(r, why),
        Write::DeliveryAttempted(_, _, _, r) => fail(r, why),
    }
}

/// Applies one write; `pending` follows the pending calls it adds or takes.
fn apply(tx: &Connection, write: Write, pending: &mut u64) -> Done {
    match write {
        Write::Insert(call, reply) => {
            let result = insert(tx, &call);
            if matches!(result, Ok(Inserted::Created)) && call.state == CallState::Pending {
                *pending += 1;
            }
            Done::Insert(reply, result.map_err(Into::into))
        }
        Write::Claim(app, function, limit, reply) => {
            let result = claim(tx, &app, &function, limit);
            if let Ok(claimed) = &result {
                *pending = pending.saturating_sub(claimed.len() as u64);
            }
            Done::Claim(reply, result.map_err(Into::into))
        }
        Write::Finish(id, outcome, expires, reply) => Done::Finish(
            reply,
            finish(tx, &id, &outcome, expires).map_err(Into::into),
        ),
        Write::Cancel(id, now, expires, reply) => {
            let result = cancel(tx, &id, now, expires);
            if matches!(result, Ok(Cancelled::Now(CallState::Pending))) {
                *pending = pending.saturating_sub(1);
            }
            Done::Cancel(reply, result.map_err(Into::into))
        }
        Write::Recover(reply) => {
            let result = recover(tx);
            if let Ok(counts) = &result {
                *pending = counts.iter().map(|(_, count)| count).sum();
            }
            Done::Recover(reply, result.map_err(Into::into))
        }
        Write::Sweep(now, reply) => Done::Sweep(reply, sweep(tx, now).map_err(Into::into)),
        Write::DeliveryAttempted(id, attempts, retry_at, reply) => Done::DeliveryAttempted(
            reply,
            delivery_attempted(tx, &id, attempts, retry_at).map_err(Into::into),
        ),
    }
}

fn insert(tx: &Connection, call: &NewCall) -> Result<Inserted, rusqlite::Error> {
    let (idem_key, idem_hash) = match &call.idempotency {
        Some((key, hash)) => (Some(key.as_str()), Some(hash.as_slice())),
        None => (None, None),
    };
    let started = (call.state == CallState::Running).then_some(call.created_ms);
    let attempt = u32::from(call.state == CallState::Running);
    let mut statement = tx.prepare_cached(
        "INSERT INTO calls (id, app, function, args, kwargs, owner, idem_key, idem_hash, callback_url, state, attempt,
             created_ms, started_ms, from_sync, forward, principal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) ON CONFLICT DO NOTHING",
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
        call.state == CallState::Running,
        call.forward,
        call.principal
            .as_ref()
            .map(|p| serde_json::to_string(p).expect("a principal always serialises")),
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
            |row| Ok((record(row)?, row.get::<_, Option<Vec<u8>>>(22)?)),
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
fn claim(
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
            Ok((row.get::<_, i64>(22)?, record(row)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    claimed.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(claimed.into_iter().map(|(_, record)| record).collect())
}

fn finish(
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
    let changed = tx.prepare_cached(
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

fn queue_delivery(tx: &Connection, id: &str, now: i64) -> Result<(), rusqlite::Error> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO deliveries (call_id, url, attempts, next_ms)
         SELECT id, callback_url, 0, ?2 FROM calls WHERE id = ?1 AND callback_url IS NOT NULL",
    )?
    .execute(params![id, now])?;
    Ok(())
}

fn cancel(
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
    queue_delivery(tx, id, now)?;
    Ok(Cancelled::Now(state))
}

fn recover(tx: &Connection) -> Result<PendingCounts, rusqlite::Error> {
    let requeued = tx.execute("UPDATE calls SET state = 0 WHERE state = 1", [])?;
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

fn sweep(tx: &Connection, now: i64) -> Result<u64, rusqlite::Error> {
    tx.execute(
        "DELETE FROM deliveries WHERE call_id IN (SELECT id FROM calls WHERE expires_ms <= ?1)",
        params![now],
    )?;
    Ok(tx.execute("DELETE FROM calls WHERE expires_ms <= ?1", params![now])? as u64)
}

fn delivery_attempted(
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
