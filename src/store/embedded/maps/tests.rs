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
        from_sync: false,
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
