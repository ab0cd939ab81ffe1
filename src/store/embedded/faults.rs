//! How a SQLite failure bears on the embedded store: a request's own
//! failure, one that clears by itself, or a broken file, which is recorded
//! once in the store's health.

use std::path::PathBuf;

use crate::store::{StoreError, StoreFault, StoreHealth};

/// How a SQLite failure bears on the store as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// This request's own failure (a constraint, a missing row): the store is fine.
    None,
    /// Disk full, a failed write or sync, a lock: clears by itself.
    Transient,
    /// The file is corrupt, not a database, or cannot be read.
    Broken(&'static str),
}

pub(super) fn fault_of(error: &rusqlite::Error) -> Fault {
    use rusqlite::ffi;
    let Some(failure) = error.sqlite_error() else {
        return Fault::None;
    };
    match (failure.code, failure.extended_code) {
        (rusqlite::ErrorCode::DatabaseCorrupt, _) => Fault::Broken("corrupt"),
        (rusqlite::ErrorCode::NotADatabase, _) => Fault::Broken("not a database"),
        (_, ffi::SQLITE_IOERR_READ | ffi::SQLITE_IOERR_SHORT_READ) => Fault::Broken("unreadable"),
        (
            rusqlite::ErrorCode::DiskFull
            | rusqlite::ErrorCode::SystemIoFailure
            | rusqlite::ErrorCode::DatabaseBusy
            | rusqlite::ErrorCode::DatabaseLocked
            | rusqlite::ErrorCode::ReadOnly
            | rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::OutOfMemory,
            _,
        ) => Fault::Transient,
        _ => Fault::None,
    }
}

/// The store's file and whether it has failed for good, shared by the
/// readers and the writer thread.
pub(super) struct FileHealth {
    pub(super) file: PathBuf,
    pub(super) health: StoreHealth,
}

impl FileHealth {
    /// The store's view of a SQLite failure; a broken file is recorded.
    pub(super) fn error(&self, error: rusqlite::Error) -> StoreError {
        match fault_of(&error) {
            Fault::None => StoreError::Sqlite(error),
            Fault::Transient => StoreError::Unavailable(error.to_string()),
            Fault::Broken(kind) => StoreError::Broken(self.fail(format!("{kind}: {error}"))),
        }
    }

    /// Records that the store failed for good (logged once, with the file).
    pub(super) fn fail(&self, why: String) -> StoreFault {
        let fault = StoreFault {
            location: self.file.display().to_string(),
            why,
        };
        if self.health.fault().is_none() {
            tracing::error!(file = %fault.location, "the call store failed for good: {}", fault.why);
        }
        self.health.fail(fault.clone());
        fault
    }
}
