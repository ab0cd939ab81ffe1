//! What the embedded store checks before it serves: that no journal
//! beside an empty file holds calls SQLite would silently drop, and that
//! the file is sound (`PRAGMA quick_check`, bounded in time). Every
//! refusal says what is wrong and what to do; the caller names the file.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{BUSY_TIMEOUT, COLUMNS, SCHEMA, SCHEMA_VERSION, deploys, maps};
use super::{Fault, fault_of};

/// What to do with a store that is corrupt or unreadable.
const RESTORE: &str = "restore it from a backup, or move it (with its -wal and -shm files) away to start with an empty store";

/// How the integrity check ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Checked {
    Sound,
    /// The budget ran out first: the store starts unchecked.
    Unfinished {
        after: Duration,
    },
}

/// `path` with SQLite's suffix for one of its side files (`-wal`, `-journal`).
pub(super) fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Refuses a missing or zero-length database beside a non-empty WAL or
/// rollback journal. SQLite would delete such a WAL on open and start an
/// empty store: the calls it held would be gone without a word.
pub(super) fn refuse_lost_journal(path: &Path) -> Result<(), String> {
    let size = std::fs::metadata(path).map(|m| m.len()).ok();
    if size.is_some_and(|bytes| bytes > 0) {
        return Ok(());
    }
    for suffix in ["-wal", "-journal"] {
        let journal = side_file(path, suffix);
        let Ok(held) = std::fs::metadata(&journal).map(|m| m.len()) else {
            continue;
        };
        if held == 0 {
            continue;
        }
        let state = if size.is_some() { "empty" } else { "missing" };
        return Err(format!(
            "the file is {state} but {} holds {held} bytes of its data, which opening it would discard; \
             restore {} from a backup, or, to start with an empty store, move both files away",
            journal.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Runs `PRAGMA quick_check` for at most `budget`. A corrupt file is an
/// error with what to do; a check that runs out of time is abandoned
/// (the caller logs it) rather than holding the start-up.
pub(super) fn check_integrity(
    connection: &Connection,
    budget: Duration,
) -> Result<Checked, String> {
    let started = Instant::now();
    let interrupt = connection.get_interrupt_handle();
    let (checked, watch) = mpsc::channel::<()>();
    let watchdog = std::thread::Builder::new()
        .name("fngate-store-check".into())
        .spawn(move || {
            let mut wait = budget;
            // Again and again until the check ends: an interrupt that comes
            // before its statement runs is forgotten when it starts.
            while watch.recv_timeout(wait) == Err(mpsc::RecvTimeoutError::Timeout) {
                interrupt.interrupt();
                wait = Duration::from_millis(5);
            }
        })
        .map_err(|e| format!("starting the integrity check: {e}"))?;
    let found = connection
        .prepare("PRAGMA quick_check(8)")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        });
    // Joined before anything else runs, so a late interrupt cannot hit
    // the next statement.
    drop(checked);
    let _ = watchdog.join();
    match found {
        Ok(lines) if lines.iter().all(|line| line == "ok") => Ok(Checked::Sound),
        Ok(lines) => Err(format!(
            "is corrupt (quick_check: {}); {RESTORE}",
            lines.join("; ")
        )),
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::OperationInterrupted) => {
            Ok(Checked::Unfinished {
                after: started.elapsed(),
            })
        }
        Err(e) => Err(explain(&e)),
    }
}

/// A start-up failure of SQLite, with what to do when there is something.
pub(super) fn explain(error: &rusqlite::Error) -> String {
    match fault_of(error) {
        Fault::Broken(kind) => format!("is {kind} ({error}); {RESTORE}"),
        _ if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) => {
            format!("{error}: free space on its filesystem")
        }
        _ => error.to_string(),
    }
}

/// Adds `parameters` to a layout-1 `calls` table (written before classes).
pub(super) fn add_parameters_column(writer: &Connection) -> Result<(), rusqlite::Error> {
    let has_it: bool = writer.query_row(
        "SELECT count(*) FROM pragma_table_info('calls') WHERE name = 'parameters'",
        [],
        |row| row.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_it {
        writer.execute_batch("ALTER TABLE calls ADD COLUMN parameters TEXT")?;
    }
    Ok(())
}

/// Adds `parent_call_id` and `origin` (a JSON object: depth, trace id,
/// scopes) to a layout-2 `calls` table (written before functions called
/// functions).
pub(super) fn add_origin_columns(writer: &Connection) -> Result<(), rusqlite::Error> {
    let has_them: bool = writer.query_row(
        "SELECT count(*) FROM pragma_table_info('calls') WHERE name = 'parent_call_id'",
        [],
        |row| row.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !has_them {
        writer.execute_batch(
            "ALTER TABLE calls ADD COLUMN parent_call_id TEXT; ALTER TABLE calls ADD COLUMN origin TEXT;",
        )?;
    }
    Ok(())
}

/// Turns on SQLite's query planner stability guarantee: a statement keeps
/// the plan it was prepared with whatever is bound to it. Without it,
/// SQLite re-prepares a cached statement at its next step whenever a
/// parameter its plan looked at (the claim's `LIMIT ?4`, values compared
/// with a partial index's condition) is bound again: the claim of every
/// dispatch round was parsed and planned anew, 59,000 instructions per
/// spawned call (bench/profile.sh).
pub(super) fn stable_plans(connection: &Connection) -> Result<(), rusqlite::Error> {
    connection.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// Opens the file, checks it, and brings its layout up: the writer's
/// connection and the pending count. Errors say what to do, not which
/// file (the caller names it).
pub(super) fn prepare(path: &Path, check_budget: Duration) -> Result<(Connection, u64), String> {
    let writer = Connection::open(path).map_err(|e| explain(&e))?;
    writer.busy_timeout(BUSY_TIMEOUT).map_err(|e| explain(&e))?;
    stable_plans(&writer).map_err(|e| explain(&e))?;
    match check_integrity(&writer, check_budget)? {
        Checked::Sound => {}
        Checked::Unfinished { after } => tracing::warn!(
            file = %path.display(),
            "the integrity check did not finish within {after:?}; starting unchecked (corruption is found when a read or write meets it)"
        ),
    }
    writer
        .pragma_update(None, "journal_mode", "WAL")
        .and_then(|()| writer.pragma_update(None, "synchronous", "FULL"))
        .map_err(|e| explain(&e))?;
    // A file written by another layout fails here, at start-up, with
    // what to do, instead of failing every spawn later. Layout 1 lacks the
    // class parameters' column, layout 2 the nested calls' columns,
    // layout 3 the spawned maps' column and table, layout 4 the deploys'
    // table: all are added here.
    writer
        .execute_batch(SCHEMA)
        .and_then(|()| add_parameters_column(&writer))
        .and_then(|()| add_origin_columns(&writer))
        .and_then(|()| maps::add_map_column(&writer))
        .and_then(|()| writer.execute_batch(maps::MAP_SCHEMA))
        .and_then(|()| writer.execute_batch(deploys::DEPLOY_SCHEMA))
        .and_then(|()| {
            writer
                .prepare(&format!(
                    "SELECT {COLUMNS}, idem_key, idem_hash FROM calls LIMIT 0"
                ))
                .map(drop)
        })
        .map_err(|e| match fault_of(&e) {
            Fault::None => format!(
                "was written by another version of fngate's store ({e}); move it away to start afresh"
            ),
            Fault::Transient | Fault::Broken(_) => explain(&e),
        })?;
    let layout = || -> Result<u64, rusqlite::Error> {
        // Written only when it changes: a store on a full disk still opens.
        let version: i64 = writer.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version != SCHEMA_VERSION {
            writer.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        let pending: i64 =
            writer.query_row("SELECT count(*) FROM calls WHERE state = 0", [], |row| {
                row.get(0)
            })?;
        Ok(pending as u64)
    };
    let pending = layout().map_err(|e| explain(&e))?;
    Ok((writer, pending))
}
