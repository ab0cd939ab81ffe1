//! The embedded store's writer: the writes callers queue, the thread that
//! applies every waiting one in a single transaction (group commit), and
//! the WAL's checkpoints. The SQL of each write is in `call_writes`,
//! `maps` and `deploys`.
//!
//! A batch that fails for want of space or on an I/O error is rolled
//! back, the WAL is checkpointed into the database and truncated (on a
//! small disk the WAL itself is what filled it), and the batch is tried
//! once more; if that fails too, its callers get `Unavailable` (503) and
//! the store takes writes again by itself once there is room. From the
//! first such failure on, the WAL is kept small (`TIGHT_WAL_PAGES`), and
//! it is truncated as soon as writes succeed again: a WAL that grows until
//! the disk is full again could not be checkpointed any more, since that
//! needs room in the database file.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use super::call_writes::{cancel, claim, delivery_attempted, finish, insert, recover, sweep};
use super::{BUSY_TIMEOUT, Fault, FileHealth, MAX_BATCH, fault_of};
use crate::store::{
    CallRecord, CallState, Cancelled, Inserted, NewCall, Outcome, PendingCounts, StoreError, now_ms,
};

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// How long a checkpoint waits for readers to move to the newest data:
/// the writer thread must not stall on a slow reader.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(50);

/// The WAL's automatic checkpoint, in pages (256 KiB), once a write has
/// failed for want of space. SQLite's default of 1000 pages (4 MiB) lets
/// the WAL outgrow a small disk; checkpointing this often costs spawn
/// throughput (measured: 19,200 inserts from 64 tasks took 1.5 to 3 times
/// as long), so it is not the default.
const TIGHT_WAL_PAGES: i64 = 64;

/// A write for the writer thread. (Moved once through a channel; boxing
/// the large variant would cost an allocation per spawn for nothing.)
#[allow(clippy::large_enum_variant)]
pub(super) enum Write {
    Insert(NewCall, Reply<Inserted>),
    Claim(String, String, usize, Reply<Vec<CallRecord>>),
    Finish(String, Outcome, i64, Reply<bool>),
    Cancel(String, i64, i64, Reply<Cancelled>),
    Requeue(String, Reply<bool>),
    Retrying(String, Reply<bool>),
    Recover(Reply<PendingCounts>),
    Sweep(i64, Reply<u64>),
    DeliveryAttempted(String, u32, Option<i64>, Reply<()>),
    /// A spawned map's write (see `maps`).
    Map(super::maps::MapWrite),
    /// A deploy's new version (see `deploys`).
    Deploy(super::deploys::DeployWrite),
    /// The checkpoint timer's tick.
    Checkpoint,
}

/// Each write's own answer in a batch that committed.
type Answers = Vec<Result<Answer, rusqlite::Error>>;

/// A write's result, held until its transaction commits.
enum Answer {
    Inserted(Inserted),
    Claimed(Vec<CallRecord>),
    Finished(bool),
    Cancelled(Cancelled),
    Requeued(bool),
    Retried(bool),
    Recovered(PendingCounts),
    Swept(u64),
    Noted,
    Map(super::maps::MapAnswer),
    Deployed(u64),
}

impl Write {
    /// Answers the caller with what `apply` gave this write.
    fn answer(self, answer: Result<Answer, StoreError>) {
        fn send<T>(reply: Reply<T>, value: T) {
            let _ = reply.send(Ok(value));
        }
        match (self, answer) {
            (write, Err(e)) => write.fail(e),
            (Write::Insert(_, r), Ok(Answer::Inserted(v))) => send(r, v),
            (Write::Claim(_, _, _, r), Ok(Answer::Claimed(v))) => send(r, v),
            (Write::Finish(_, _, _, r), Ok(Answer::Finished(v))) => send(r, v),
            (Write::Cancel(_, _, _, r), Ok(Answer::Cancelled(v))) => send(r, v),
            (Write::Requeue(_, r), Ok(Answer::Requeued(v))) => send(r, v),
            (Write::Retrying(_, r), Ok(Answer::Retried(v))) => send(r, v),
            (Write::Recover(r), Ok(Answer::Recovered(v))) => send(r, v),
            (Write::Sweep(_, r), Ok(Answer::Swept(v))) => send(r, v),
            (Write::DeliveryAttempted(_, _, _, r), Ok(Answer::Noted)) => send(r, ()),
            (Write::Map(write), Ok(Answer::Map(v))) => write.answer(v),
            (Write::Deploy(write), Ok(Answer::Deployed(v))) => write.answer(v),
            (_, Ok(_)) => unreachable!("apply answers each write with its own kind"),
        }
    }

    fn fail(self, error: StoreError) {
        fn fail<T>(reply: Reply<T>, error: StoreError) {
            let _ = reply.send(Err(error));
        }
        match self {
            Write::Insert(_, r) => fail(r, error),
            Write::Claim(_, _, _, r) => fail(r, error),
            Write::Finish(_, _, _, r) => fail(r, error),
            Write::Cancel(_, _, _, r) => fail(r, error),
            Write::Requeue(_, r) => fail(r, error),
            Write::Retrying(_, r) => fail(r, error),
            Write::Recover(r) => fail(r, error),
            Write::Sweep(_, r) => fail(r, error),
            Write::DeliveryAttempted(_, _, _, r) => fail(r, error),
            Write::Map(write) => write.fail(error),
            Write::Deploy(write) => write.fail(error),
            Write::Checkpoint => {}
        }
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    connection: Connection,
    /// Pending calls as of the last commit, published only after it.
    pending: Arc<AtomicU64>,
    health: Arc<FileHealth>,
    /// Something was committed since the last complete checkpoint, or it failed.
    behind: bool,
    /// Batches failed in a row (logged at the first and when they end).
    failing: u64,
    /// The WAL is kept to `TIGHT_WAL_PAGES`.
    tight: bool,
}

impl Writer {
    pub(super) fn new(
        connection: Connection,
        pending: Arc<AtomicU64>,
        health: Arc<FileHealth>,
    ) -> Writer {
        Writer {
            connection,
            pending,
            health,
            // A checkpoint at the first tick also shrinks a WAL left by the
            // previous process.
            behind: true,
            failing: 0,
            tight: false,
        }
    }

    /// Applies `batch` in one transaction and answers every write after
    /// the commit; a transient failure is retried once after a checkpoint.
    fn commit(&mut self, batch: Vec<Write>) {
        let started = std::time::Instant::now();
        let mut attempt = self.try_batch(&batch);
        if attempt
            .as_ref()
            .is_err_and(|e| fault_of(e) == Fault::Transient)
            && self.checkpoint()
        {
            attempt = self.try_batch(&batch);
        }
        match attempt {
            Ok((answers, count)) => {
                crate::metrics::global().record_store_commit(started.elapsed());
                self.behind = true;
                self.pending.store(count, Ordering::Release);
                for (write, answer) in batch.into_iter().zip(answers) {
                    write.answer(answer.map_err(|e| self.health.error(e)));
                }
                if self.failing > 0 {
                    tracing::info!(file = %self.health.file.display(), failed = self.failing, "call store: writes succeed again");
                    self.failing = 0;
                    // While there is room for it.
                    self.checkpoint();
                }
            }
            Err(e) => {
                if self.failing == 0 {
                    tracing::error!(file = %self.health.file.display(), error = %e, "call store: a write failed; answering 503 until writes succeed again");
                }
                self.failing += 1;
                self.tighten();
                let why = e.to_string();
                let error = self.health.error(e);
                for write in batch {
                    write.fail(match &error {
                        StoreError::Broken(fault) => StoreError::Broken(fault.clone()),
                        _ => StoreError::Unavailable(why.clone()),
                    });
                }
            }
        }
    }

    /// One try at a batch: each write's own answer, and the pending count
    /// after them. A failure of the store itself (not of one write's
    /// request) fails the whole batch: SQLite may have rolled it back.
    fn try_batch(&mut self, batch: &[Write]) -> Result<(Answers, u64), rusqlite::Error> {
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut count = self.pending.load(Ordering::Acquire);
        let mut answers = Vec::with_capacity(batch.len());
        for write in batch {
            match apply(&transaction, write, &mut count) {
                Err(e) if fault_of(&e) != Fault::None => return Err(e),
                answer => answers.push(answer),
            }
        }
        transaction.commit()?;
        Ok((answers, count))
    }

    /// Keeps the WAL small from now on.
    fn tighten(&mut self) {
        if self.tight {
            return;
        }
        match self
            .connection
            .pragma_update(None, "wal_autocheckpoint", TIGHT_WAL_PAGES)
        {
            Ok(()) => {
                self.tight = true;
                tracing::warn!(file = %self.health.file.display(), "call store: the WAL is checkpointed every {TIGHT_WAL_PAGES} pages from now on");
            }
            Err(e) => {
                tracing::debug!(error = %e, "call store: cannot lower the WAL's automatic checkpoint")
            }
        }
    }

    /// Moves the WAL into the database and truncates it. True when it
    /// completed (readers on older data may hold part of it back).
    fn checkpoint(&mut self) -> bool {
        let run = |connection: &Connection| -> Result<bool, rusqlite::Error> {
            connection.busy_timeout(CHECKPOINT_WAIT)?;
            let busy: Result<i64, _> =
                connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0));
            connection.busy_timeout(BUSY_TIMEOUT)?;
            Ok(busy? == 0)
        };
        match run(&self.connection) {
            Ok(done) => {
                self.behind = !done;
                done
            }
            Err(e) => {
                tracing::debug!(file = %self.health.file.display(), error = %e, "call store: checkpoint failed");
                if let StoreError::Broken(_) = self.health.error(e) {
                    self.behind = false;
                }
                false
            }
        }
    }
}

/// Applies every waiting write in one transaction and answers them after
/// the commit; checkpoints when the timer asks and anything was written.
pub(super) fn write_loop(mut writer: Writer, mut queue: mpsc::Receiver<Write>) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let ticks = batch.len();
        batch.retain(|write| !matches!(write, Write::Checkpoint));
        let ticked = batch.len() < ticks;
        if !batch.is_empty() {
            writer.commit(batch);
        }
        if ticked && writer.behind {
            writer.checkpoint();
        }
    }
}

/// Applies one write; `pending` follows the pending calls it adds or takes.
fn apply(tx: &Connection, write: &Write, pending: &mut u64) -> Result<Answer, rusqlite::Error> {
    Ok(match write {
        Write::Insert(call, _) => {
            let inserted = insert(tx, call)?;
            if matches!(inserted, Inserted::Created) && call.state == CallState::Pending {
                *pending += 1;
            }
            Answer::Inserted(inserted)
        }
        Write::Claim(app, function, limit, _) => {
            let claimed = claim(tx, app, function, *limit)?;
            *pending = pending.saturating_sub(claimed.len() as u64);
            Answer::Claimed(claimed)
        }
        Write::Finish(id, outcome, expires, _) => {
            Answer::Finished(finish(tx, id, outcome, *expires)?)
        }
        Write::Cancel(id, now, expires, _) => {
            let cancelled = cancel(tx, id, *now, *expires)?;
            if matches!(cancelled, Cancelled::Now(CallState::Pending)) {
                *pending = pending.saturating_sub(1);
            }
            Answer::Cancelled(cancelled)
        }
        Write::Requeue(id, _) => {
            let requeued = tx.execute(
                "UPDATE calls SET state = 0 WHERE id = ?1 AND state = 1",
                params![id],
            )? == 1;
            if requeued {
                *pending += 1;
            }
            Answer::Requeued(requeued)
        }
        Write::Retrying(id, _) => {
            let counted = tx.execute(
                "UPDATE calls SET attempt = attempt + 1, started_ms = ?2 WHERE id = ?1 AND state = 1",
                params![id, now_ms()],
            )? == 1;
            Answer::Retried(counted)
        }
        Write::Recover(_) => {
            let counts = recover(tx)?;
            *pending = counts.iter().map(|(_, count)| count).sum();
            Answer::Recovered(counts)
        }
        Write::Sweep(now, _) => Answer::Swept(sweep(tx, *now)?),
        Write::DeliveryAttempted(id, attempts, retry_at, _) => {
            delivery_attempted(tx, id, *attempts, *retry_at)?;
            Answer::Noted
        }
        Write::Map(write) => Answer::Map(super::maps::apply(tx, write)?),
        Write::Deploy(write) => Answer::Deployed(super::deploys::apply(tx, write)?),
        Write::Checkpoint => Answer::Noted,
    })
}
