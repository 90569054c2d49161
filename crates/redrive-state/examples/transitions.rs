//! The state store alone: committed transitions per second (issue 6d).
//!
//! `cargo run --release -p redrive-state --example transitions -- [ITEMS] [IN_FLIGHT] [POSTGRES_URL]`
//!
//! Inserts ITEMS items, then IN_FLIGHT tasks record each item's `Started` and `Finished` the
//! way the engine does (each waits for its commit before the next). Measured in the same run:
//! the seeds' pattern (one SQLite transaction per update with SQLite's default journal, on
//! 20,000 items) and the floor of SQLite itself (every update in one transaction, WAL). Prints
//! one JSON object per line.

use std::time::Instant;

use redrive_core::item::{NewItem, Status};
use redrive_core::state::{JobInfo, StateStore, Transition};
use redrive_state::{PostgresStateStore, SqliteStateStore};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let items: i64 = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let in_flight: i64 = args.next().map_or(Ok(256), |a| a.parse())?;
    let postgres = args.next();
    let dir = tempfile::tempdir()?;

    let sqlite = SqliteStateStore::open(&dir.path().join("state.db"))?;
    report(
        "redrive sqlite",
        items,
        transitions(sqlite, items, in_flight).await?,
    );
    let seeds = items.min(20_000);
    report(
        "seeds: one sqlite commit per update",
        seeds,
        raw_sqlite(&dir.path().join("raw.db"), seeds, false)?,
    );
    report(
        "sqlite floor: one transaction",
        items,
        raw_sqlite(&dir.path().join("floor.db"), items, true)?,
    );
    if let Some(url) = postgres {
        PostgresStateStore::discard(&url, "bench_transitions").await?;
        let store = PostgresStateStore::connect(&url, "bench_transitions").await?;
        report(
            "redrive postgres",
            items,
            transitions(store, items, in_flight).await?,
        );
    }
    Ok(())
}

fn report(store: &str, items: i64, seconds: f64) {
    let transitions = 2 * items;
    println!(
        "{{\"store\": \"{store}\", \"transitions\": {transitions}, \"seconds\": {seconds:.3}, \"per_second\": {:.0}}}",
        transitions as f64 / seconds.max(1e-9)
    );
}

/// Records Started and Finished for every item from `in_flight` tasks; seconds taken.
async fn transitions<S: StateStore + 'static>(
    store: S,
    items: i64,
    in_flight: i64,
) -> Result<f64, Error> {
    let store = std::sync::Arc::new(store);
    store
        .begin(&JobInfo {
            name: "bench_transitions".into(),
            fingerprint: "bench".into(),
            earlier_fingerprints: Vec::new(),
        })
        .await?;
    for start in (0..items).step_by(10_000) {
        let batch = (start..(start + 10_000).min(items))
            .map(|i| NewItem {
                key: format!("item-{i:09}"),
                fields: Default::default(),
            })
            .collect();
        store.insert(batch).await?;
    }
    let ids = store
        .runnable(0, 1)
        .await?
        .first()
        .map_or(1, |item| item.id);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..in_flight {
        let store = std::sync::Arc::clone(&store);
        tasks.spawn(async move {
            let mut id = ids + lane;
            while id < ids + items {
                store
                    .record(Transition::Started {
                        id,
                        step: 0,
                        step_name: "exists".into(),
                    })
                    .await?;
                store
                    .record(Transition::Finished {
                        id,
                        status: Status::Done,
                        bytes: 0,
                        reason: None,
                        output: None,
                    })
                    .await?;
                id += in_flight;
            }
            Ok::<_, redrive_core::state::StateError>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    store.flush().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// The same two updates per item straight through rusqlite: one transaction each (the seeds'
/// scripts) or all in one (what SQLite itself can do); seconds taken.
fn raw_sqlite(path: &std::path::Path, items: i64, one_transaction: bool) -> Result<f64, Error> {
    let mut db = rusqlite::Connection::open(path)?;
    // The seeds' scripts open SQLite with its defaults (a rollback journal, synchronous = FULL);
    // the floor gets the settings redrive uses (WAL, synchronous = NORMAL).
    if one_transaction {
        db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
    }
    db.execute_batch(
        "CREATE TABLE files (id INTEGER PRIMARY KEY, key TEXT UNIQUE, status TEXT, attempts INTEGER DEFAULT 0);",
    )?;
    {
        let tx = db.transaction()?;
        for i in 0..items {
            tx.execute(
                "INSERT INTO files (id, key, status) VALUES (?1, ?2, 'pending')",
                rusqlite::params![i, format!("item-{i:09}")],
            )?;
        }
        tx.commit()?;
    }
    let started = Instant::now();
    let updates = [
        "UPDATE files SET status = 'running', attempts = attempts + 1 WHERE id = ?1",
        "UPDATE files SET status = 'done' WHERE id = ?1",
    ];
    if one_transaction {
        let tx = db.transaction()?;
        for i in 0..items {
            for sql in updates {
                tx.prepare_cached(sql)?.execute([i])?;
            }
        }
        tx.commit()?;
    } else {
        for i in 0..items {
            for sql in updates {
                let tx = db.transaction()?;
                tx.prepare_cached(sql)?.execute([i])?;
                tx.commit()?;
            }
        }
    }
    Ok(started.elapsed().as_secs_f64())
}
