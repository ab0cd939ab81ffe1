//! Makes committed batches durable off the writer thread, and answers
//! their writes only then.
//!
//! SQLite commits with `synchronous=NORMAL`: a commit writes its frames to
//! the WAL file and returns without syncing it. This thread syncs the WAL
//! file once for every batch committed since its last sync, then answers
//! those batches' writes. That is what `synchronous=FULL` does (it syncs
//! the WAL at the end of every commit), so a write is exactly as durable
//! when it is answered, power loss included; but the writer goes on with
//! the next batch while the disk syncs, and one sync covers all the
//! batches committed meanwhile. A reader may see a batch before its sync
//! ends: a gateway killed then keeps it (it is in the file), and only a
//! power loss in that instant could take back what a reader saw, never
//! what a write's caller was told.
//!
//! A sync that fails leaves the file's state unknown: the store is broken
//! from then on (as a failed fsync is for any database), and the writes
//! waiting for it fail.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use super::FileHealth;
use super::writer::{Answer, Write};
use crate::store::StoreError;

/// A committed batch: each write with its answer, and when the batch
/// started (the commit metric counts until it is durable).
pub(super) struct Committed {
    pub(super) started: Instant,
    pub(super) answers: Vec<(Write, Result<Answer, StoreError>)>,
}

/// The WAL file beside the database, opened once and again when SQLite
/// has made a new one.
struct WalFile {
    path: PathBuf,
    database: PathBuf,
    open: Option<(File, u64)>,
}

impl WalFile {
    /// Syncs the WAL file's data to the disk; the database file itself
    /// when there is no WAL (nothing written yet, or not in WAL mode).
    fn sync(&mut self) -> std::io::Result<()> {
        let inode = match std::fs::metadata(&self.path) {
            Ok(meta) => meta.ino(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.open = None;
                return File::open(&self.database)?.sync_data();
            }
            Err(e) => return Err(e),
        };
        if self.open.as_ref().is_none_or(|(_, ino)| *ino != inode) {
            self.open = Some((File::open(&self.path)?, inode));
        }
        let (file, _) = self.open.as_ref().expect("opened just above");
        file.sync_data()
    }
}

/// Syncs and answers the batches the writer committed, until the writer
/// ends (its sender is dropped) and every batch it sent is answered.
pub(super) fn sync_loop(database: PathBuf, health: Arc<FileHealth>, queue: Receiver<Committed>) {
    let mut wal_path = database.clone().into_os_string();
    wal_path.push("-wal");
    let mut wal = WalFile {
        path: PathBuf::from(wal_path),
        database,
        open: None,
    };
    while let Ok(first) = queue.recv() {
        // Every batch sent so far was committed before this sync starts.
        let mut batches = vec![first];
        batches.extend(queue.try_iter());
        let synced = wal.sync();
        let fault = synced
            .err()
            .map(|e| health.fail(format!("syncing its WAL file to the disk failed: {e}")));
        for batch in batches {
            if fault.is_none() {
                crate::metrics::global().record_store_commit(batch.started.elapsed());
            }
            for (write, answer) in batch.answers {
                match &fault {
                    None => write.answer(answer),
                    Some(fault) => write.fail(StoreError::Broken(fault.clone())),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreHealth;

    fn wal_of(dir: &std::path::Path) -> WalFile {
        WalFile {
            path: dir.join("calls.db-wal"),
            database: dir.join("calls.db"),
            open: None,
        }
    }

    #[test]
    fn a_wal_file_made_anew_is_opened_anew() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("calls.db"), b"").unwrap();
        std::fs::write(dir.path().join("calls.db-wal"), b"first").unwrap();
        let mut wal = wal_of(dir.path());
        wal.sync().expect("syncs the WAL");
        let first = wal
            .open
            .as_ref()
            .map(|(_, ino)| *ino)
            .expect("the WAL is open");
        // SQLite deletes the WAL when its last connection closes and makes
        // a new one at the next write.
        std::fs::rename(dir.path().join("calls.db-wal"), dir.path().join("old")).unwrap();
        std::fs::write(dir.path().join("calls.db-wal"), b"second").unwrap();
        wal.sync().expect("syncs the new WAL");
        let second = wal
            .open
            .as_ref()
            .map(|(_, ino)| *ino)
            .expect("the WAL is open");
        assert_ne!(first, second, "the new file is the one synced");
    }

    #[test]
    fn without_a_wal_the_database_file_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("calls.db"), b"").unwrap();
        let mut wal = wal_of(dir.path());
        wal.sync().expect("syncs the database file");
        assert!(wal.open.is_none());
        std::fs::remove_file(dir.path().join("calls.db")).unwrap();
        assert!(wal.sync().is_err(), "nothing to sync is an error");
    }

    #[test]
    fn writes_are_answered_after_their_sync_and_fail_when_it_fails() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("calls.db");
        std::fs::write(&database, b"").unwrap();
        let health = Arc::new(FileHealth {
            file: database.clone(),
            health: StoreHealth::default(),
        });
        let (send, queue) = std::sync::mpsc::channel();
        let (reply, answered) = tokio::sync::oneshot::channel();
        send.send(Committed {
            started: Instant::now(),
            answers: vec![(Write::Sweep(0, reply), Ok(Answer::Swept(3)))],
        })
        .unwrap();
        drop(send);
        sync_loop(database, health.clone(), queue);
        assert_eq!(answered.blocking_recv().unwrap().unwrap(), 3);
        assert!(health.health.fault().is_none());

        // A database path under a file, not a folder: the sync fails.
        let bad = dir.path().join("calls.db").join("inner.db");
        let (send, queue) = std::sync::mpsc::channel();
        let (reply, answered) = tokio::sync::oneshot::channel();
        send.send(Committed {
            started: Instant::now(),
            answers: vec![(Write::Sweep(0, reply), Ok(Answer::Swept(3)))],
        })
        .unwrap();
        drop(send);
        sync_loop(bad, health.clone(), queue);
        assert!(matches!(
            answered.blocking_recv().unwrap(),
            Err(StoreError::Broken(_))
        ));
        assert!(
            health.health.fault().is_some(),
            "the store is broken from then on"
        );
    }
}
