//! The SQLite store against the conformance suite, and SQLite-specific behaviour.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use redrive_core::state::{JobInfo, StateError, StateStore};
use redrive_state::{SqliteStateStore, conformance};

#[tokio::test]
async fn sqlite_passes_the_conformance_suite() {
    let dir = Arc::new(tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")));
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let factory = move || {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = dir.path().join(format!("state-{n}.db"));
        Box::pin(async move {
            let store = SqliteStateStore::open(&path).unwrap_or_else(|e| panic!("open: {e}"));
            Box::new(store) as Box<dyn StateStore>
        }) as _
    };
    conformance::run_all(&factory).await;
    conformance::activity_aggregates_when_items_ran(factory().await.as_ref()).await;
}

#[tokio::test]
async fn open_existing_reports_a_missing_state() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let missing = dir.path().join("nope.db");
    assert!(matches!(
        SqliteStateStore::open_existing(&missing),
        Err(StateError::Missing { .. })
    ));
}

#[tokio::test]
async fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("s.db");
    let job = JobInfo {
        name: "j".into(),
        fingerprint: "f".into(),
        earlier_fingerprints: Vec::new(),
    };
    {
        let store = SqliteStateStore::open(&path).unwrap_or_else(|e| panic!("open: {e}"));
        store.begin(&job).await.unwrap_or_else(|e| panic!("{e}"));
        store
            .set_source_complete()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let store = SqliteStateStore::open(&path).unwrap_or_else(|e| panic!("open: {e}"));
    store.begin(&job).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(store.source_complete().await.unwrap_or(false));
}

#[tokio::test]
async fn a_state_on_a_read_only_path_is_a_clear_error() {
    let error = SqliteStateStore::open(std::path::Path::new("/proc/redrive/state.db"))
        .map(|_| ())
        .map_err(|e| e.to_string());
    let message = error.err().unwrap_or_default();
    assert!(
        message.starts_with("state store `/proc/redrive/state.db` failed:"),
        "{message}"
    );
}

/// After a flush (the end of every run) the database file holds the whole state: the WAL is
/// empty, so losing it loses nothing.
#[tokio::test]
async fn a_flush_leaves_the_state_in_the_database_file() {
    use redrive_core::item::NewItem;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStateStore::open(&path).unwrap();
    store
        .begin(&JobInfo {
            name: "j".into(),
            fingerprint: "f".into(),
            earlier_fingerprints: Vec::new(),
        })
        .await
        .unwrap();
    let items: Vec<NewItem> = (0..5_000)
        .map(|i| NewItem {
            key: format!("k{i}"),
            fields: Default::default(),
        })
        .collect();
    store.insert(items).await.unwrap();
    store.flush().await.unwrap();
    let wal = std::fs::metadata(dir.path().join("state.db-wal")).map_or(0, |m| m.len());
    assert_eq!(wal, 0, "the WAL was checkpointed into the file");
    // The file alone, copied elsewhere without its WAL, has every item.
    let copy = dir.path().join("copy.db");
    std::fs::copy(&path, &copy).unwrap();
    let connection = rusqlite::Connection::open(&copy).unwrap();
    let n: i64 = connection
        .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .unwrap();
    assert_eq!(n, 5_000);
    drop(store);
}

/// The views a person queries (`workitems`, `files`, `failed`) show a parent with its children
/// counted, each child with its parent's key and fields, and a failed child, not its parent.
#[tokio::test]
async fn the_views_show_parents_with_their_children() {
    use redrive_core::item::{Fields, NewItem, Status};
    use redrive_core::state::Transition;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStateStore::open(&path).unwrap();
    store
        .begin(&JobInfo {
            name: "views".into(),
            fingerprint: "f".into(),
            earlier_fingerprints: Vec::new(),
        })
        .await
        .unwrap();
    let item = |key: &str, n: &str| NewItem {
        key: key.to_owned(),
        fields: Fields::from([("n".to_owned(), n.to_owned())]),
    };
    store.insert(vec![item("2", "2")]).await.unwrap();
    let parent = store.last_item().await.unwrap().unwrap().id;
    let children = vec![item("c0", "2"), item("c1", "2"), item("c2", "2")];
    assert_eq!(store.insert_children(parent, children).await.unwrap(), 3);
    store.set_expanded(parent).await.unwrap();
    let kids = store.runnable_children(parent, 0, 10).await.unwrap();
    for (child, failed) in kids.iter().zip([false, true, false]) {
        let id = child.id;
        let started = Transition::Started {
            id,
            step: 0,
            step_name: "copy".into(),
        };
        store.record(started).await.unwrap();
        let end = if failed {
            Transition::Failed {
                id,
                error: "boom".into(),
            }
        } else {
            Transition::Finished {
                id,
                status: Status::Done,
                bytes: 5,
                reason: None,
                output: None,
            }
        };
        store.record(end).await.unwrap();
    }
    let error = "1 of 3 children failed".to_owned();
    store
        .record(Transition::Failed { id: parent, error })
        .await
        .unwrap();
    store.flush().await.unwrap();

    let connection = rusqlite::Connection::open(&path).unwrap();
    let row: (i64, i64, i64, String) = connection
        .query_row(
            "SELECT files_total, files_failed, bytes, error FROM workitems WHERE key = '2'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(row, (3, 1, 10, "1 of 3 children failed".to_owned()));
    let inherited: String = connection
        .query_row(
            "SELECT json_extract(fields, '$.n') FROM files WHERE workitem = '2' AND key = 'c2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(inherited, "2");
    let failed: (i64, String) = connection
        .query_row("SELECT count(*), max(key) FROM failed", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(failed, (1, "c1".to_owned()), "the child, not its parent");
}

/// A first run killed between creating its state file and writing to it leaves a 0-byte file
/// beside an unmarked lock: the next run opens it as new. Once a run has written a state
/// (the lock is marked), a 0-byte file is a truncated one and is refused.
#[test]
fn an_empty_state_is_refused_only_once_a_run_has_written_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let _lock = redrive_state::RunLock::acquire(&path).unwrap();
        std::fs::write(&path, "").unwrap();
    }
    drop(SqliteStateStore::open(&path).unwrap_or_else(|e| panic!("refused: {e}")));
    {
        let lock = redrive_state::RunLock::acquire(&path).unwrap();
        lock.mark_used();
    }
    std::fs::write(&path, "").unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    assert!(matches!(
        SqliteStateStore::open(&path),
        Err(StateError::Damaged { .. })
    ));
}

/// `queue` hands the transition to the writer when it returns, not when its future is first
/// polled: a transition queued before another is committed with it or before it. The engine
/// gives an item's slot back between the two halves, and the next item's start must not
/// commit ahead of the previous item's finish.
#[tokio::test]
async fn a_queued_transition_commits_no_later_than_one_recorded_after_it() {
    use redrive_core::item::{NewItem, Status};
    use redrive_core::state::Transition;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let store = SqliteStateStore::open(&dir.path().join("s.db")).unwrap();
    let job = JobInfo {
        name: "j".into(),
        fingerprint: "f".into(),
        earlier_fingerprints: Vec::new(),
    };
    store.begin(&job).await.unwrap();
    let item = |key: &str| NewItem {
        key: key.into(),
        fields: Default::default(),
    };
    store.insert(vec![item("a"), item("b")]).await.unwrap();
    let page = store.runnable(0, 10).await.unwrap();
    let (a, b) = (page[0].id, page[1].id);
    for id in [a, b] {
        let started = Transition::Started {
            id,
            step: 0,
            step_name: "s".into(),
        };
        store.record(started).await.unwrap();
    }
    let finish = |id| Transition::Finished {
        id,
        status: Status::Done,
        bytes: 0,
        reason: None,
        output: None,
    };
    let a_committed = store.queue(finish(a));
    // Not polled yet: `b`'s finish is recorded and committed first in the caller's order.
    store.record(finish(b)).await.unwrap();
    let done = store.items_with_status(Status::Done, 0, 10).await.unwrap();
    assert_eq!(
        done.iter().map(|i| i.id).collect::<Vec<_>>(),
        vec![a, b],
        "the transition queued first is committed by the time the later one is"
    );
    a_committed.await.unwrap();
}

/// The state's files as a kill -9 at this instant leaves them: the file and its log copied
/// aside (the writer is idle between the awaited writes).
fn killed_copy(path: &std::path::Path, to: &std::path::Path) -> std::path::PathBuf {
    let copy = to.join("state.db");
    std::fs::copy(path, &copy).unwrap();
    std::fs::copy(
        format!("{}-wal", path.display()),
        format!("{}-wal", copy.display()),
    )
    .unwrap();
    copy
}

/// A person looks into a killed run's state (`sqlite3 state.db 'SELECT …'`): closing the last
/// connection folds the log into the file and deletes it.
fn look_into(path: &std::path::Path) {
    let connection = rusqlite::Connection::open(path).unwrap();
    let _: i64 = connection
        .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
        .unwrap();
    drop(connection);
    assert!(
        !std::path::Path::new(&format!("{}-wal", path.display())).exists(),
        "SQLite deletes the log when its last connection closes"
    );
}

/// A run killed after opening its state and before its first write (a slow listing, a query
/// that takes a while) had recorded nothing; someone then looked into the state, which folds
/// the log into the file and deletes it. That state was refused as one whose log was deleted
/// (seen in CI: the crash tests count done items between kills).
#[tokio::test]
async fn a_state_looked_into_after_a_kill_before_any_write_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let job = JobInfo {
        name: "j".into(),
        fingerprint: "f".into(),
        earlier_fingerprints: Vec::new(),
    };
    let store = SqliteStateStore::open(&path).unwrap();
    store.begin(&job).await.unwrap();
    let killed = tempfile::tempdir().unwrap();
    let copy = killed_copy(&path, killed.path());
    look_into(&copy);
    let reopened = SqliteStateStore::open(&copy).unwrap_or_else(|e| panic!("refused: {e}"));
    reopened.begin(&job).await.unwrap();

    // Killed after a write: looked into, the state keeps what was written and resumes; its
    // log deleted instead, what was written is gone and the state is refused.
    let item = redrive_core::item::NewItem {
        key: "a".into(),
        fields: Default::default(),
    };
    store.insert(vec![item]).await.unwrap();
    let looked = tempfile::tempdir().unwrap();
    let copy = killed_copy(&path, looked.path());
    look_into(&copy);
    let reopened = SqliteStateStore::open(&copy).unwrap_or_else(|e| panic!("refused: {e}"));
    reopened.begin(&job).await.unwrap();
    assert_eq!(reopened.runnable(0, 10).await.unwrap().len(), 1);
    let deleted = tempfile::tempdir().unwrap();
    let copy = killed_copy(&path, deleted.path());
    std::fs::remove_file(format!("{}-wal", copy.display())).unwrap();
    assert!(matches!(
        SqliteStateStore::open(&copy),
        Err(StateError::Damaged { .. })
    ));
}
