//! The embedded store against a real SQLite file.

use super::*;
use crate::store::now_ms;

fn new_call(id: &str) -> NewCall {
    NewCall {
        id: id.to_owned(),
        app: "demo".to_owned(),
        function: "square".to_owned(),
        args: "[]".to_owned(),
        kwargs: "{\"x\": 1e400}".to_owned(),
        forward: None,
        principal: None,
        parameters: None,
        origin: None,
        owner: None,
        idempotency: None,
        callback_url: None,
        state: CallState::Pending,
        from_sync: false,
        created_ms: now_ms(),
    }
}

fn open() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("data/calls.db")).unwrap();
    (dir, store)
}

#[tokio::test]
async fn calls_move_from_pending_to_finished_in_order() {
    let (_dir, store) = open();
    for id in ["fc-1", "fc-2"] {
        assert!(matches!(
            store.insert(new_call(id)).await.unwrap(),
            Inserted::Created
        ));
    }
    let first = store.claim_next("demo", "square").await.unwrap().unwrap();
    assert_eq!(
        (first.id.as_str(), first.state, first.attempt),
        ("fc-1", CallState::Running, 1)
    );
    assert_eq!(first.kwargs, "{\"x\": 1e400}");
    let outcome = Outcome::Succeeded(b"1764".to_vec());
    assert!(
        store
            .finish("fc-1".into(), outcome.clone(), now_ms() + 60_000)
            .await
            .unwrap()
    );
    let stored = store.get("fc-1").await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.outcome),
        (CallState::Succeeded, Some(outcome))
    );
    assert_eq!(
        store
            .claim_next("demo", "square")
            .await
            .unwrap()
            .unwrap()
            .id,
        "fc-2"
    );
    assert!(store.claim_next("demo", "square").await.unwrap().is_none());
    assert!(store.claim_next("demo", "other").await.unwrap().is_none());
}

#[tokio::test]
async fn cancel_answers_by_state() {
    let (_dir, store) = open();
    store.insert(new_call("fc-p")).await.unwrap();
    let later = now_ms() + 60_000;
    assert_eq!(
        store.cancel("fc-p".into(), now_ms(), later).await.unwrap(),
        Cancelled::Now(CallState::Pending)
    );
    assert!(
        store.claim_next("demo", "square").await.unwrap().is_none(),
        "a cancelled call never runs"
    );
    assert_eq!(
        store.cancel("fc-p".into(), now_ms(), later).await.unwrap(),
        Cancelled::AlreadyFinished(CallState::Cancelled)
    );
    assert_eq!(
        store
            .cancel("fc-none".into(), now_ms(), later)
            .await
            .unwrap(),
        Cancelled::NotFound
    );
    store.insert(new_call("fc-r")).await.unwrap();
    store.claim_next("demo", "square").await.unwrap().unwrap();
    assert_eq!(
        store.cancel("fc-r".into(), now_ms(), later).await.unwrap(),
        Cancelled::Now(CallState::Running)
    );
    assert!(
        !store
            .finish("fc-r".into(), Outcome::TimedOut, later)
            .await
            .unwrap(),
        "a cancelled call keeps its state"
    );
}

#[tokio::test]
async fn idempotency_keys_find_the_first_call() {
    let (_dir, store) = open();
    let mut call = new_call("fc-a");
    call.idempotency = Some(("key-1".into(), vec![1, 2, 3]));
    assert!(matches!(
        store.insert(call.clone()).await.unwrap(),
        Inserted::Created
    ));
    call.id = "fc-b".into();
    match store.insert(call.clone()).await.unwrap() {
        Inserted::Existing {
            record,
            same_request,
        } => assert_eq!((record.id.as_str(), same_request), ("fc-a", true)),
        other => panic!("{other:?}"),
    }
    call.idempotency = Some(("key-1".into(), vec![9]));
    assert!(matches!(
        store.insert(call).await.unwrap(),
        Inserted::Existing {
            same_request: false,
            ..
        }
    ));
}

#[tokio::test]
async fn a_reopened_store_requeues_running_calls_with_a_new_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        store.insert(new_call("fc-1")).await.unwrap();
        store.insert(new_call("fc-2")).await.unwrap();
        store.claim_next("demo", "square").await.unwrap().unwrap();
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let demo_square = ("demo".to_owned(), "square".to_owned());
    assert_eq!(store.recover().await.unwrap(), vec![(demo_square, 2)]);
    let again = store.claim_next("demo", "square").await.unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempt), ("fc-1", 2));
}

#[tokio::test]
async fn sweep_deletes_expired_results_and_their_deliveries() {
    let (_dir, store) = open();
    let mut call = new_call("fc-1");
    call.callback_url = Some("http://127.0.0.1:1/hook".into());
    store.insert(call).await.unwrap();
    store.claim_next("demo", "square").await.unwrap();
    let expires = now_ms() + 1_000;
    store
        .finish("fc-1".into(), Outcome::TimedOut, expires)
        .await
        .unwrap();
    let (due, _) = store.due_deliveries(now_ms(), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(store.sweep(expires - 1).await.unwrap(), 0);
    assert_eq!(store.sweep(expires).await.unwrap(), 1);
    assert!(store.get("fc-1").await.unwrap().is_none());
    assert!(
        store
            .due_deliveries(now_ms(), 10)
            .await
            .unwrap()
            .0
            .is_empty()
    );
}

#[tokio::test]
async fn concurrent_inserts_share_transactions_and_all_land() {
    let (_dir, store) = open();
    let store = std::sync::Arc::new(store);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let store = store.clone();
        tasks.spawn(async move { store.insert(new_call(&format!("fc-{i}"))).await.map(drop) });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(store.recover().await.unwrap()[0].1, 500);
}

#[tokio::test]
async fn passthrough_calls_keep_their_request_and_answer() {
    let (_dir, store) = open();
    let mut call = new_call("fc-web");
    call.forward = Some(b"{\"method\":\"PUT\"}".to_vec());
    store.insert(call).await.unwrap();
    let running = store.claim_next("demo", "square").await.unwrap().unwrap();
    assert_eq!(
        running.forward.as_deref(),
        Some(&b"{\"method\":\"PUT\"}"[..])
    );
    let answer = Outcome::Answered {
        status: 418,
        content_type: Some("text/plain".into()),
        body: b"teapot".to_vec(),
    };
    store
        .finish("fc-web".into(), answer.clone(), now_ms() + 60_000)
        .await
        .unwrap();
    let stored = store.get("fc-web").await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.outcome),
        (CallState::Succeeded, Some(answer))
    );
}

#[test]
fn a_file_of_another_layout_is_refused_at_open_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    let old = rusqlite::Connection::open(&path).unwrap();
    old.execute_batch("CREATE TABLE calls (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE);")
        .unwrap();
    drop(old);
    let error = EmbeddedStore::open(&path)
        .err()
        .expect("an old layout was accepted");
    assert!(error.to_string().contains("move it away"), "{error}");
}

#[tokio::test]
async fn a_batch_claim_takes_the_oldest_calls_in_order_and_no_more_than_asked() {
    let (_dir, store) = open();
    for i in 1..=5 {
        store.insert(new_call(&format!("fc-{i}"))).await.unwrap();
    }
    let mut other = new_call("fc-other");
    other.function = "other".into();
    store.insert(other).await.unwrap();
    let ids =
        |records: &[CallRecord]| -> Vec<String> { records.iter().map(|r| r.id.clone()).collect() };
    let first = store.claim_batch("demo", "square", 3).await.unwrap();
    assert_eq!(ids(&first), ["fc-1", "fc-2", "fc-3"]);
    assert!(
        first
            .iter()
            .all(|r| r.state == CallState::Running && r.attempt == 1 && r.started_ms.is_some())
    );
    let rest = store.claim_batch("demo", "square", 100).await.unwrap();
    assert_eq!(ids(&rest), ["fc-4", "fc-5"], "fewer than asked: none left");
    assert!(
        store
            .claim_batch("demo", "square", 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(!store.has_pending("demo", "square").await.unwrap());
    assert!(store.has_pending("demo", "other").await.unwrap());
    let stored = store.get("fc-2").await.unwrap().unwrap();
    assert_eq!((stored.state, stored.attempt), (CallState::Running, 1));
}

#[tokio::test]
async fn the_pending_count_follows_every_write_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        assert_eq!(store.pending(), 0);
        let mut keyed = new_call("fc-1");
        keyed.idempotency = Some(("key".into(), vec![1]));
        store.insert(keyed.clone()).await.unwrap();
        for id in ["fc-2", "fc-3", "fc-4"] {
            store.insert(new_call(id)).await.unwrap();
        }
        assert_eq!(store.pending(), 4);
        // A repeated key stores nothing; an adopted sync call is running.
        keyed.id = "fc-again".into();
        store.insert(keyed).await.unwrap();
        let mut adopted = new_call("fc-sync");
        adopted.state = CallState::Running;
        store.insert(adopted).await.unwrap();
        assert_eq!(store.pending(), 4);
        let later = now_ms() + 60_000;
        store.cancel("fc-4".into(), now_ms(), later).await.unwrap();
        store.cancel("fc-4".into(), now_ms(), later).await.unwrap();
        store
            .cancel("fc-sync".into(), now_ms(), later)
            .await
            .unwrap();
        assert_eq!(store.pending(), 3);
        assert_eq!(
            store.claim_batch("demo", "square", 2).await.unwrap().len(),
            2
        );
        assert_eq!(store.pending(), 1);
    }
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.pending(), 1, "counted at open");
    store.recover().await.unwrap();
    assert_eq!(store.pending(), 3, "the two left running are pending again");
}

#[tokio::test]
async fn calls_claimed_in_a_batch_and_left_running_run_again_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    {
        let store = EmbeddedStore::open(&path).unwrap();
        for i in 1..=10 {
            store.insert(new_call(&format!("fc-{i:02}"))).await.unwrap();
        }
        let claimed = store.claim_batch("demo", "square", 4).await.unwrap();
        assert_eq!(claimed.len(), 4);
        let outcome = Outcome::Succeeded(b"1".to_vec());
        store
            .finish("fc-02".into(), outcome, now_ms() + 60_000)
            .await
            .unwrap();
        // The process dies here: fc-01, fc-03 and fc-04 were running.
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let demo_square = ("demo".to_owned(), "square".to_owned());
    assert_eq!(store.recover().await.unwrap(), vec![(demo_square, 9)]);
    let again = store.claim_batch("demo", "square", 100).await.unwrap();
    let runs: Vec<(&str, u32)> = again.iter().map(|r| (r.id.as_str(), r.attempt)).collect();
    assert_eq!(
        runs,
        [
            ("fc-01", 2),
            ("fc-03", 2),
            ("fc-04", 2),
            ("fc-05", 1),
            ("fc-06", 1),
            ("fc-07", 1),
            ("fc-08", 1),
            ("fc-09", 1),
            ("fc-10", 1)
        ]
    );
    let done = store.get("fc-02").await.unwrap().unwrap();
    assert_eq!((done.state, done.attempt), (CallState::Succeeded, 1));
}

/// A store at `path` holding `calls` pending calls, all moved into the
/// database file (none left in the WAL), then closed.
fn filled_store_file(path: &std::path::Path, calls: usize) {
    let connection = rusqlite::Connection::open(path).unwrap();
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    connection.execute_batch(SCHEMA).unwrap();
    connection.execute_batch("BEGIN").unwrap();
    for i in 0..calls {
        connection
            .execute(
                "INSERT INTO calls (id, app, function, args, kwargs, state, attempt, created_ms)
                 VALUES (?1, 'demo', 'square', '[]', ?2, 0, 0, 0)",
                rusqlite::params![format!("fc-{i}"), "x".repeat(300)],
            )
            .unwrap();
    }
    connection.execute_batch("COMMIT").unwrap();
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// Overwrites every page after the first (the schema) with bytes no page
/// starts with.
fn overwrite_pages(path: &std::path::Path) {
    use std::io::{Seek, SeekFrom, Write};
    let size = std::fs::metadata(path).unwrap().len();
    assert!(size > 8192, "a store of a few pages at least: {size} bytes");
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(4096)).unwrap();
    file.write_all(&vec![0xA5; (size - 4096) as usize]).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn a_store_with_overwritten_pages_is_refused_at_open_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    filled_store_file(&path, 200);
    overwrite_pages(&path);
    let error = EmbeddedStore::open(&path)
        .err()
        .expect("a corrupt store was opened");
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("corrupt"), "{text}");
    assert!(text.contains("restore it from a backup"), "{text}");
}

#[test]
fn an_empty_file_beside_a_wal_that_holds_calls_is_refused_and_the_wal_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    let wal = startup::side_file(&path, "-wal");
    std::fs::write(&path, b"").unwrap();
    std::fs::write(&wal, vec![7; 8192]).unwrap();
    let error = EmbeddedStore::open(&path)
        .err()
        .expect("an empty store was started over its WAL");
    let text = error.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains(&wal.display().to_string()), "{text}");
    assert!(text.contains("move both files away"), "{text}");
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        8192,
        "the WAL is kept"
    );
    // A missing file beside it is refused the same way.
    std::fs::remove_file(&path).unwrap();
    let error = EmbeddedStore::open(&path).err().expect("refused");
    assert!(error.to_string().contains("is missing"), "{error}");
    // An empty WAL holds nothing: a fresh store starts.
    std::fs::write(&wal, b"").unwrap();
    EmbeddedStore::open(&path).unwrap();
}

#[test]
fn an_integrity_check_past_its_budget_is_abandoned_and_the_store_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    filled_store_file(&path, 100_000);
    let connection = rusqlite::Connection::open(&path).unwrap();
    let started = std::time::Instant::now();
    let checked = startup::check_integrity(&connection, Duration::ZERO).unwrap();
    println!("abandoned after {:?}", started.elapsed());
    assert!(
        matches!(checked, startup::Checked::Unfinished { .. }),
        "{checked:?}"
    );
    // The interrupt does not outlive the check.
    let count: i64 = connection
        .query_row("SELECT count(*) FROM calls", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 100_000);
    let started = std::time::Instant::now();
    assert_eq!(
        startup::check_integrity(&connection, Duration::from_secs(60)).unwrap(),
        startup::Checked::Sound
    );
    println!("a whole check took {:?}", started.elapsed());
    let store = EmbeddedStore::open_with(
        &path,
        &Maintenance {
            check_budget: Duration::ZERO,
            ..Maintenance::default()
        },
    )
    .unwrap();
    assert_eq!(store.pending(), 100_000);
}

#[tokio::test]
async fn a_store_that_breaks_while_open_reports_it_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    filled_store_file(&path, 200);
    let store = EmbeddedStore::open(&path).unwrap();
    assert!(store.health().fault().is_none());
    overwrite_pages(&path);
    let error = store.get("fc-150").await.expect_err("a corrupt read");
    assert!(matches!(error, StoreError::Broken(_)), "{error}");
    let fault = store.health().fault().expect("the store knows it broke");
    assert_eq!(fault.location, path.display().to_string());
    assert!(fault.why.starts_with("corrupt"), "{fault}");
    assert!(!fault.why.contains(&fault.location), "{fault}");
    // Whoever waits for it hears of it.
    assert_eq!(store.health().failed().await, fault);
}

#[tokio::test]
async fn the_wal_is_checkpointed_and_truncated_on_the_timer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    let maintenance = Maintenance {
        checkpoint_every: Duration::from_millis(20),
        ..Maintenance::default()
    };
    let store = EmbeddedStore::open_with(&path, &maintenance).unwrap();
    let wal = startup::side_file(&path, "-wal");
    for round in 0..3 {
        store
            .insert(new_call(&format!("fc-{round}")))
            .await
            .unwrap();
        assert!(std::fs::metadata(&wal).unwrap().len() > 0, "round {round}");
        // No signal exists for a checkpoint: the file is polled, bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&wal).unwrap().len() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL was never truncated"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(store.get("fc-2").await.unwrap().is_some());
}

#[test]
fn sqlite_failures_are_told_apart_by_what_they_mean_for_the_store() {
    use rusqlite::ffi;
    let failure = |code| rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
    for (code, fault) in [
        (ffi::SQLITE_FULL, Fault::Transient),
        (ffi::SQLITE_IOERR_WRITE, Fault::Transient),
        (ffi::SQLITE_IOERR_FSYNC, Fault::Transient),
        (ffi::SQLITE_BUSY, Fault::Transient),
        (ffi::SQLITE_CORRUPT, Fault::Broken("corrupt")),
        (ffi::SQLITE_NOTADB, Fault::Broken("not a database")),
        (ffi::SQLITE_IOERR_READ, Fault::Broken("unreadable")),
        (ffi::SQLITE_CONSTRAINT, Fault::None),
    ] {
        assert_eq!(fault_of(&failure(code)), fault, "code {code}");
    }
    assert_eq!(fault_of(&rusqlite::Error::QueryReturnedNoRows), Fault::None);
}

#[tokio::test]
async fn a_store_written_before_classes_gains_the_parameters_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    {
        // Layout 1: the same table without `parameters`, one call in it.
        let connection = rusqlite::Connection::open(&path).unwrap();
        let old = SCHEMA.replace(",\n    parameters TEXT", "");
        assert_ne!(old, SCHEMA, "layout 1 is layout 2 without one column");
        connection.execute_batch(&old).unwrap();
        connection.pragma_update(None, "user_version", 1).unwrap();
        connection
            .execute(
                "INSERT INTO calls (id, app, function, args, kwargs, state, attempt, created_ms)
                 VALUES ('fc-old', 'demo', 'square', '[]', '{}', 0, 0, 0)",
                [],
            )
            .unwrap();
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let old = store.get("fc-old").await.unwrap().unwrap();
    assert_eq!((old.state, old.parameters), (CallState::Pending, None));
    let mut call = new_call("fc-new");
    call.parameters = Some(r#"{"size":"large"}"#.to_owned());
    store.insert(call).await.unwrap();
    let new = store.get("fc-new").await.unwrap().unwrap();
    assert_eq!(new.parameters.as_deref(), Some(r#"{"size":"large"}"#));
}

#[tokio::test]
async fn a_store_written_before_nested_calls_gains_their_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("calls.db");
    {
        // Layout 2: the same table without `parent_call_id` and `origin`.
        let connection = rusqlite::Connection::open(&path).unwrap();
        let old = SCHEMA.replace(",\n    parent_call_id TEXT,\n    origin TEXT", "");
        assert_ne!(old, SCHEMA, "layout 2 is layout 3 without two columns");
        connection.execute_batch(&old).unwrap();
        connection.pragma_update(None, "user_version", 2).unwrap();
        connection
            .execute(
                "INSERT INTO calls (id, app, function, args, kwargs, state, attempt, created_ms)
                 VALUES ('fc-old', 'demo', 'square', '[]', '{}', 0, 0, 0)",
                [],
            )
            .unwrap();
    }
    let store = EmbeddedStore::open(&path).unwrap();
    let old = store.get("fc-old").await.unwrap().unwrap();
    assert_eq!((old.state, old.origin), (CallState::Pending, None));
    let mut child = new_call("fc-child");
    let origin = Origin {
        parent_call_id: Some("fc-parent".to_owned()),
        depth: 2,
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
        scopes: vec!["invoke:demo/*".to_owned()],
    };
    child.origin = Some(origin.clone());
    store.insert(child).await.unwrap();
    assert_eq!(
        store.get("fc-child").await.unwrap().unwrap().origin,
        Some(origin)
    );
    // A client's call with scopes keeps them, with no parent.
    let mut own = new_call("fc-own");
    let scopes_only = Origin {
        scopes: vec!["invoke:demo/square".to_owned()],
        ..Origin::default()
    };
    own.origin = Some(scopes_only.clone());
    store.insert(own).await.unwrap();
    let claimed = store.claim_batch("demo", "square", 10).await.unwrap();
    let own = claimed.iter().find(|c| c.id == "fc-own").unwrap();
    assert_eq!(own.origin, Some(scopes_only));
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
}
