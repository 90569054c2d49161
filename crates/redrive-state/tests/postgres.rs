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
async fn opening_the_store_while_a_run_holds_its_lock_does_not_block_or_steal_it() {
    let url = url();
    let schema = format!("redrive_test_{}_lock", std::process::id());
    let store = fresh("lock").await;
    let lock = store.lock_run().await.unwrap_or_else(|e| panic!("{e}"));
    // A reader (`status`) migrates under its own lock: it neither waits for the run nor takes
    // the run lock, and a second run is refused.
    let reader = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        PostgresStateStore::connect_schema(&url, &schema),
    )
    .await
    .unwrap_or_else(|_| panic!("opening the store waited for the run lock"))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        reader.lock_run().await,
        Err(redrive_core::state::StateError::Locked { .. })
    ));
    drop(lock);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(reader.lock_run().await.is_ok(), "released with its holder");
}
