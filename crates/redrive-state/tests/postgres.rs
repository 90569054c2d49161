//! The PostgreSQL store against the conformance suite (PostgreSQL started by `scripts/test`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use redrive_core::state::{JobInfo, StateStore};
use redrive_state::{PostgresStateStore, conformance};

fn url() -> String {
    std::env::var("REDRIVE_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("REDRIVE_TEST_POSTGRES_URL is not set: these tests need the PostgreSQL that `scripts/test` starts; run `scripts/test`")
    })
}

/// A fresh schema for each store.
async fn fresh(name: &str) -> PostgresStateStore {
    let url = url();
    let schema = format!("redrive_test_{}_{name}", std::process::id());
    let admin = sqlx::PgPool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&admin)
    .await
    .unwrap_or_else(|e| panic!("drop schema: {e}"));
    PostgresStateStore::connect_schema(&url, &schema)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_conformance_suite() {
    let counter = Arc::new(AtomicUsize::new(0));
    let factory = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move { Box::new(fresh(&format!("c{n}")).await) as Box<dyn StateStore> }) as _
    };
    conformance::run_all(&factory).await;
    conformance::activity_aggregates_when_items_ran(factory().await.as_ref()).await;
}

#[tokio::test]
async fn two_processes_migrating_at_once_do_not_race() {
    let url = url();
    let schema = format!("redrive_test_{}_race", std::process::id());
    let _ = fresh("race").await;
    let (a, b) = tokio::join!(
        PostgresStateStore::connect_schema(&url, &schema),
        PostgresStateStore::connect_schema(&url, &schema)
    );
    let (a, b) = (
        a.unwrap_or_else(|e| panic!("{e}")),
        b.unwrap_or_else(|e| panic!("{e}")),
    );
    let job = JobInfo {
        name: "j".into(),
        fingerprint: "f".into(),
        earlier_fingerprints: Vec::new(),
    };
    a.begin(&job).await.unwrap_or_else(|e| panic!("{e}"));
    b.begin(&job).await.unwrap_or_else(|e| panic!("{e}"));
    let items = |keys: &[&str]| {
        keys.iter()
            .map(|k| redrive_core::item::NewItem {
                key: (*k).to_owned(),
                fields: Default::default(),
            })
            .collect::<Vec<_>>()
    };
    let (x, y) = tokio::join!(
        a.insert(items(&["1", "2", "3"])),
        b.insert(items(&["2", "3", "4"]))
    );
    assert_eq!(
        x.unwrap_or(0) + y.unwrap_or(0),
        4,
        "racing loads insert each key once"
    );
    assert_eq!(a.summary().await.map(|s| s.total()).unwrap_or(0), 4);
}

/// `status`, `report` and joining workers connect to a live job: an up-to-date schema is not
/// migrated again, so connecting neither waits for the workers' open transactions nor, once
/// queued for its table lock, holds up their writes.
#[tokio::test]
async fn connecting_to_a_current_schema_takes_no_lock_on_its_items() {
    let url = url();
    let schema = format!("redrive_test_{}_live", std::process::id());
    let store = fresh("live").await;
    let job = JobInfo {
        name: "j".into(),
        fingerprint: "f".into(),
        earlier_fingerprints: Vec::new(),
    };
    store.begin(&job).await.unwrap_or_else(|e| panic!("{e}"));
    let admin = sqlx::PgPool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    // A worker's write, still open.
    let mut writer = admin.begin().await.unwrap_or_else(|e| panic!("{e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{schema}\".items SET attempts = attempts + 1"
    )))
    .execute(&mut *writer)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let joined = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        PostgresStateStore::connect_schema(&url, &schema),
    )
    .await
    .unwrap_or_else(|_| panic!("connecting waited for the open write: it migrated again"));
    joined.unwrap_or_else(|e| panic!("{e}"));
    writer.rollback().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn a_bad_url_is_a_clear_error_without_the_password() {
    let error = PostgresStateStore::connect("postgres://someone:hunter2pass@127.0.0.1:1/none", "j")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let message = error.err().unwrap_or_default();
    assert!(
        message.starts_with("state store `postgres://someone@127.0.0.1:1/none#redrive_j` failed"),
        "{message}"
    );
    assert!(!message.contains("hunter2pass"), "{message}");
}

#[tokio::test]
async fn runs_share_the_run_lock_and_a_restart_needs_it_alone() {
    let url = url();
    let schema = format!("redrive_test_{}_lock", std::process::id());
    let store = fresh("lock").await;
    let run = store
        .lock_run(false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // A reader (`status`) migrates under its own lock: it neither waits for the run nor takes
    // the run lock; a second run shares the job; a restart is refused while runs hold it.
    let other = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        PostgresStateStore::connect_schema(&url, &schema),
    )
    .await
    .unwrap_or_else(|_| panic!("opening the store waited for the run lock"))
    .unwrap_or_else(|e| panic!("{e}"));
    let second = other
        .lock_run(false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        other.lock_run(true).await,
        Err(redrive_core::state::StateError::Locked { .. })
    ));
    drop((run, second));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        other.lock_run(true).await.is_ok(),
        "released with its holders"
    );
}

fn keys(n: usize) -> Vec<redrive_core::item::NewItem> {
    (0..n)
        .map(|i| redrive_core::item::NewItem {
            key: format!("k{i:05}"),
            fields: Default::default(),
        })
        .collect()
}

async fn worker(schema: &str, lease_ms: u64) -> PostgresStateStore {
    let store = PostgresStateStore::connect_schema(&url(), schema)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .with_lease(std::time::Duration::from_millis(lease_ms));
    store
        .begin(&JobInfo {
            name: "j".into(),
            fingerprint: "f".into(),
            earlier_fingerprints: Vec::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
}

/// Leases, as the shared-store conformance suite checks them: handles on one schema are
/// processes with 1 s leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_shared_store_suite() {
    let opened = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let open = move |name: &str| {
        let name = name.to_owned();
        let first = opened
            .lock()
            .map(|mut o| o.insert(name.clone()))
            .unwrap_or(false);
        Box::pin(async move {
            if first {
                let _ = fresh(&format!("shared_{name}")).await;
            }
            let schema = format!("redrive_test_{}_shared_{name}", std::process::id());
            let store = PostgresStateStore::connect_schema(&url(), &schema)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .with_lease(std::time::Duration::from_millis(1_000));
            Box::new(store) as Box<dyn StateStore>
        }) as _
    };
    conformance::run_shared(&open).await;
}

/// Fencing: a worker whose lease on an item lapsed and was taken over can record nothing more
/// for it (`LeaseLost`), and `holds` says so before it retries; the new holder records as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_item_refuses_the_old_holders_writes() {
    use redrive_core::item::Status;
    use redrive_core::state::{StateError, Transition};
    let schema = format!("redrive_test_{}_fence", std::process::id());
    let _ = fresh("fence").await;
    let a = worker(&schema, 60_000).await;
    let b = worker(&schema, 60_000).await;
    a.insert(keys(1)).await.unwrap_or_else(|e| panic!("{e}"));
    let claimed = a.claim(0, 1).await.unwrap_or_else(|e| panic!("{e}"));
    let id = claimed
        .first()
        .map(|i| i.id)
        .unwrap_or_else(|| panic!("nothing claimed"));
    assert!(a.holds(id).await.unwrap_or(false));

    // `a` freezes past its lease (made to lapse here), and `b` takes the item over.
    let admin = sqlx::PgPool::connect(&url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{schema}\".items SET lease_until = now() - interval '1 second'"
    )))
    .execute(&admin)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let taken = b.claim(0, 1).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(taken.iter().map(|i| i.id).collect::<Vec<_>>(), [id]);

    assert!(
        !a.holds(id).await.unwrap_or(true),
        "a still thinks it holds it"
    );
    let started = a
        .record(Transition::Started {
            id,
            step: 0,
            step_name: "copy".into(),
        })
        .await;
    assert!(
        matches!(started, Err(StateError::LeaseLost { .. })),
        "{started:?}"
    );
    let finished = a
        .record(Transition::Finished {
            id,
            status: Status::Done,
            bytes: 0,
            reason: None,
            output: None,
        })
        .await;
    assert!(
        matches!(finished, Err(StateError::LeaseLost { .. })),
        "{finished:?}"
    );

    b.record(Transition::Finished {
        id,
        status: Status::Done,
        bytes: 0,
        reason: None,
        output: None,
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let summary = b.summary().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.count(Status::Done), 1);
}

/// The starts a worker records together (one statement) are fenced row by row: those another
/// worker took over are `LeaseLost`, the others land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_recorded_together_are_fenced_each() {
    use redrive_core::item::Status;
    use redrive_core::state::{StateError, Transition};
    let schema = format!("redrive_test_{}_fence_all", std::process::id());
    let _ = fresh("fence_all").await;
    let a = worker(&schema, 60_000).await;
    let b = worker(&schema, 60_000).await;
    a.insert(keys(3)).await.unwrap_or_else(|e| panic!("{e}"));
    let claimed: Vec<i64> = a
        .claim(0, 3)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(claimed.len(), 3);
    // The first item's lease lapses and `b` takes it over.
    let admin = sqlx::PgPool::connect(&url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE \"{schema}\".items SET lease_until = now() - interval '1 second' WHERE id = {}",
        claimed[0]
    )))
    .execute(&admin)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let taken = b.claim(0, 3).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(taken.iter().map(|i| i.id).collect::<Vec<_>>(), [claimed[0]]);

    let starts = claimed
        .iter()
        .map(|&id| Transition::Started {
            id,
            step: 0,
            step_name: "copy".into(),
        })
        .collect();
    let answers = a.record_all(starts).await;
    assert!(
        matches!(answers[0], Err(StateError::LeaseLost { .. })),
        "{answers:?}"
    );
    assert!(answers[1].is_ok() && answers[2].is_ok(), "{answers:?}");
    let summary = a.summary().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.count(Status::Running), 2, "a's starts that landed");
    assert_eq!(
        summary.count(Status::Pending),
        1,
        "b's claim, waiting for its start"
    );
    let attempts: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT attempts FROM \"{schema}\".items ORDER BY id"
    )))
    .fetch_all(&admin)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        attempts,
        [0, 1, 1],
        "the taken-over item's start did not land"
    );
}

/// Transitions recorded at once share a transaction; one that PostgreSQL refuses (text with
/// a NUL byte) fails alone, and the others of its group still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_fails_alone_in_its_group() {
    use redrive_core::item::Status;
    use redrive_core::state::Transition;
    let schema = format!("redrive_test_{}_group", std::process::id());
    let _ = fresh("group").await;
    let a = worker(&schema, 60_000).await;
    a.insert(keys(20)).await.unwrap_or_else(|e| panic!("{e}"));
    let claimed = a.claim(0, 20).await.unwrap_or_else(|e| panic!("{e}"));
    let bad = claimed[7].id;
    let records = claimed.iter().map(|item| {
        let transition = if item.id == bad {
            Transition::Failed {
                id: item.id,
                error: "nul \0 byte".into(),
            }
        } else {
            Transition::Finished {
                id: item.id,
                status: Status::Done,
                bytes: 1,
                reason: None,
                output: None,
            }
        };
        a.record(transition)
    });
    let answers = futures::future::join_all(records).await;
    for (item, answer) in claimed.iter().zip(&answers) {
        assert_eq!(answer.is_err(), item.id == bad, "{}: {answer:?}", item.key);
    }
    let summary = a.summary().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(summary.count(Status::Done), 19);
}

/// A claim, a lease's renewal and an advance change no indexed column, so PostgreSQL updates
/// the row in place (HOT: no index entries; an index on `status` or on a lease column made the
/// PostgreSQL state ~2× dearer an item, bench/README.md session 21). A claimed item waiting
/// for a slot stays `pending` under its lease (no one else takes it); one that goes back to
/// `pending` unfinished (`Unstarted`, `Released`) ends its lease: another worker takes it at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_update_rows_in_place_and_items_given_back_are_free_at_once() {
    use redrive_core::state::Transition;
    let schema = format!("redrive_test_{}_in_place", std::process::id());
    let _ = fresh("in_place").await;
    let a = worker(&schema, 60_000).await;
    let b = worker(&schema, 60_000).await;
    let admin = sqlx::PgPool::connect(&url())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'items'",
    )
    .bind(&schema)
    .fetch_all(&admin)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(indexes.len() >= 4, "{indexes:?}");
    for column in [
        "lease_owner",
        "lease_epoch",
        "lease_until",
        "updated_at",
        "step_index",
        "bytes",
    ] {
        assert!(
            indexes.iter().all(|def| !def.contains(column)),
            "an index names `{column}`, which a claim or an advance changes: {indexes:?}"
        );
    }
    let top_level_status_keys: Vec<&String> = indexes
        .iter()
        .filter(|def| {
            let key = def.split(" WHERE ").next().unwrap_or(def);
            key.contains("status") && !def.contains("parent IS NOT NULL")
        })
        .collect();
    assert!(
        top_level_status_keys.is_empty(),
        "an index keyed on a top-level item's status: {top_level_status_keys:?}"
    );

    a.insert(keys(4)).await.unwrap_or_else(|e| panic!("{e}"));
    let claimed = a.claim(0, 3).await.unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<i64> = claimed.iter().map(|i| i.id).collect();
    assert_eq!(ids.len(), 3);
    let waiting: Vec<(String, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT status, lease_until > now() FROM \"{schema}\".items WHERE id = ANY($1) ORDER BY id"
    )))
    .bind(&ids)
    .fetch_all(&admin)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        waiting
            .iter()
            .all(|(status, leased)| status == "pending" && *leased),
        "claimed items waiting for a slot: {waiting:?}"
    );
    let others = b.claim(0, 10).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        others.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["k00003"],
        "b takes only the item no one holds"
    );

    for id in &ids[..2] {
        a.record(Transition::Started {
            id: *id,
            step: 0,
            step_name: "s".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    }
    a.record(Transition::Unstarted { id: ids[0] })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    a.record(Transition::Released {
        id: ids[1],
        error: "stopped".into(),
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let freed = b.claim(0, 10).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        freed.iter().map(|i| i.id).collect::<Vec<_>>(),
        ids[..2],
        "items given back are taken at once; the one still held is not"
    );

    // A failure ends the lease too: retried (`--retry-failed`), the item is taken at once.
    a.record(Transition::Started {
        id: ids[2],
        step: 0,
        step_name: "s".into(),
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    a.record(Transition::Failed {
        id: ids[2],
        error: "boom".into(),
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let requeued = b
        .requeue(redrive_core::state::Requeue::Failed)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(requeued, 1);
    let retried = b.claim(0, 10).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        retried.iter().map(|i| i.id).collect::<Vec<_>>(),
        [ids[2]],
        "a failed item retried is taken at once"
    );
}
