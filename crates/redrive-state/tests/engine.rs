//! The engine over a real SQLite state, with fake sources and steps (pure engine behaviour:
//! retries, classes, concurrency, ordering of transitions and side effects).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::engine::{self, NoReport, Pipeline, RunOptions, RunReport, StopLevel};
use redrive_core::error::{ErrorClass, StepError};
use redrive_core::item::{Fields, Status};
use redrive_core::retry::Backoff;
use redrive_core::source::{Source, SourceError};
use redrive_core::state::{JobInfo, StateStore};
use redrive_core::step::{Outcome, Step, StepContext};
use redrive_core::template::{Template, TemplateError};
use redrive_state::SqliteStateStore;

#[derive(Debug)]
struct Numbers {
    n: usize,
    delay: Duration,
}

impl Source for Numbers {
    fn fields(&self) -> BTreeSet<String> {
        ["n".to_owned()].into()
    }

    fn items(&self) -> BoxStream<'static, Result<Fields, SourceError>> {
        let delay = self.delay;
        futures::stream::iter(0..self.n)
            .then(move |i| async move {
                if i == 0 {
                    tokio::time::sleep(delay).await;
                }
                Ok(Fields::from([("n".to_owned(), i.to_string())]))
            })
            .boxed()
    }
}

/// Fails each item `failures` times with `class`, then succeeds; tracks concurrency.
#[derive(Debug)]
struct Flaky {
    failures: u32,
    class: ErrorClass,
    seen: Mutex<HashMap<String, u32>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    calls: AtomicUsize,
}

impl Flaky {
    fn new(failures: u32, class: ErrorClass) -> Arc<Self> {
        Arc::new(Self {
            failures,
            class,
            seen: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Step for Flaky {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let key = fields["n"].clone();
        let mut seen = self.seen.lock().unwrap();
        let count = seen.entry(key.clone()).or_insert(0);
        *count += 1;
        if *count <= self.failures {
            return Err(StepError::new(self.class, format!("item {key} failed")));
        }
        Ok(Outcome::Done { bytes: 1 })
    }

    fn describe(&self, _: &Fields) -> Result<String, TemplateError> {
        Ok("flaky".to_owned())
    }
}

/// Checks, from its own connection, that the previous step's completion is committed.
#[derive(Debug)]
struct SeesCommittedStep {
    db: PathBuf,
    violations: AtomicUsize,
}

#[async_trait]
impl Step for SeesCommittedStep {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let connection = rusqlite::Connection::open(&self.db).unwrap();
        let (step, status): (i64, String) = connection
            .query_row(
                "SELECT step_index, status FROM items WHERE key = ?1",
                [&fields["n"]],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        if (step, status.as_str()) != (1, "running") {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Outcome::Done { bytes: 0 })
    }

    fn describe(&self, _: &Fields) -> Result<String, TemplateError> {
        Ok("check".to_owned())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    db: PathBuf,
    store: Arc<SqliteStateStore>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let store = Arc::new(SqliteStateStore::open(&db).unwrap());
    store
        .begin(&JobInfo {
            name: "e".into(),
            fingerprint: "f".into(),
        })
        .await
        .unwrap();
    Setup {
        _dir: dir,
        db,
        store,
    }
}

fn options(concurrency: usize, retries: u32) -> RunOptions {
    RunOptions {
        concurrency,
        retries,
        limit: None,
        retry_failed: false,
        backoff: Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        },
    }
}

async fn run(
    store: &Arc<SqliteStateStore>,
    source: Numbers,
    steps: Vec<Arc<dyn Step>>,
    options: RunOptions,
) -> RunReport {
    let pipeline = Arc::new(Pipeline {
        source: Arc::new(source),
        key: Template::parse("{n}").unwrap(),
        steps: steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| (format!("s{i}"), s))
            .collect(),
    });
    let (_stop, shutdown) = tokio::sync::watch::channel(StopLevel::Run);
    let state: Arc<dyn StateStore> = Arc::clone(store) as _;
    engine::run(pipeline, state, options, Arc::new(NoReport), shutdown)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_source_is_run_in_full_whenever_it_finishes() {
    // The loader finishing around the runner's empty-page check must not end the run early.
    for round in 0..40u64 {
        let s = setup().await;
        let step = Flaky::new(0, ErrorClass::Transient);
        let source = Numbers {
            n: 3,
            delay: Duration::from_micros(round * 250),
        };
        let report = run(&s.store, source, vec![step.clone()], options(2, 0)).await;
        assert_eq!(report.done, 3, "round {round}");
    }
}

#[tokio::test]
async fn transient_errors_are_retried_until_they_pass() {
    let s = setup().await;
    let step = Flaky::new(2, ErrorClass::Transient);
    let report = run(
        &s.store,
        Numbers {
            n: 10,
            delay: Duration::ZERO,
        },
        vec![step.clone()],
        options(4, 3),
    )
    .await;
    assert_eq!((report.done, report.failed, report.retries), (10, 0, 20));
    assert_eq!(step.calls.load(Ordering::SeqCst), 30);
}

#[tokio::test]
async fn throttling_is_counted_apart() {
    let s = setup().await;
    let step = Flaky::new(1, ErrorClass::Throttled);
    let report = run(
        &s.store,
        Numbers {
            n: 5,
            delay: Duration::ZERO,
        },
        vec![step],
        options(4, 3),
    )
    .await;
    assert_eq!((report.done, report.retries, report.throttled), (5, 5, 5));
}

#[tokio::test]
async fn retries_run_out_and_the_item_fails_with_its_error() {
    let s = setup().await;
    let step = Flaky::new(5, ErrorClass::Transient);
    let report = run(
        &s.store,
        Numbers {
            n: 2,
            delay: Duration::ZERO,
        },
        vec![step.clone()],
        options(4, 2),
    )
    .await;
    assert_eq!((report.done, report.failed, report.retries), (0, 2, 4));
    let failed = s
        .store
        .items_with_status(Status::Failed, 0, 10)
        .await
        .unwrap();
    assert_eq!(failed[0].error.as_deref(), Some("item 0 failed"));
}

#[tokio::test]
async fn permanent_errors_are_not_retried_and_the_run_goes_on() {
    let s = setup().await;
    let step = Flaky::new(1, ErrorClass::Permanent);
    let report = run(
        &s.store,
        Numbers {
            n: 6,
            delay: Duration::ZERO,
        },
        vec![step.clone()],
        options(2, 5),
    )
    .await;
    assert_eq!((report.failed, report.retries), (6, 0));
    assert_eq!(step.calls.load(Ordering::SeqCst), 6, "one attempt each");
}

#[tokio::test]
async fn concurrency_is_bounded() {
    let s = setup().await;
    let step = Flaky::new(0, ErrorClass::Transient);
    run(
        &s.store,
        Numbers {
            n: 200,
            delay: Duration::ZERO,
        },
        vec![step.clone()],
        options(3, 0),
    )
    .await;
    assert_eq!(step.max_in_flight.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_step_completion_is_committed_before_the_next_step_runs() {
    let s = setup().await;
    let check = Arc::new(SeesCommittedStep {
        db: s.db.clone(),
        violations: AtomicUsize::new(0),
    });
    let first = Flaky::new(0, ErrorClass::Transient);
    let report = run(
        &s.store,
        Numbers {
            n: 300,
            delay: Duration::ZERO,
        },
        vec![first, check.clone()],
        options(16, 0),
    )
    .await;
    assert_eq!(report.done, 300);
    assert_eq!(check.violations.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_fatal_error_stops_the_run_and_puts_the_item_back() {
    let s = setup().await;
    let step = Flaky::new(1, ErrorClass::Fatal);
    let pipeline = Arc::new(Pipeline {
        source: Arc::new(Numbers {
            n: 50,
            delay: Duration::ZERO,
        }),
        key: Template::parse("{n}").unwrap(),
        steps: vec![("s0".to_owned(), step.clone() as Arc<dyn Step>)],
    });
    let (_stop, shutdown) = tokio::sync::watch::channel(StopLevel::Run);
    let state: Arc<dyn StateStore> = Arc::clone(&s.store) as _;
    let result = engine::run(pipeline, state, options(1, 3), Arc::new(NoReport), shutdown).await;
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert_eq!(message, "step `s0` failed for `0`, stopping the run");
    assert_eq!(
        step.calls.load(Ordering::SeqCst),
        1,
        "fatal errors are not retried, no further item starts"
    );
    let summary = s.store.summary().await.unwrap();
    assert_eq!(summary.count(Status::Failed), 0);
    assert_eq!(summary.count(Status::Pending), 50);
}

#[tokio::test]
async fn a_drain_request_lets_in_flight_items_finish_and_starts_no_more() {
    let s = setup().await;
    let step = Flaky::new(0, ErrorClass::Transient);
    let pipeline = Arc::new(Pipeline {
        source: Arc::new(Numbers {
            n: 10_000,
            delay: Duration::ZERO,
        }),
        key: Template::parse("{n}").unwrap(),
        steps: vec![("s0".to_owned(), step.clone() as Arc<dyn Step>)],
    });
    let (stop, shutdown) = tokio::sync::watch::channel(StopLevel::Run);
    let state: Arc<dyn StateStore> = Arc::clone(&s.store) as _;
    let running = tokio::spawn(engine::run(
        pipeline,
        state,
        options(4, 0),
        Arc::new(NoReport),
        shutdown,
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(StopLevel::Drain).unwrap();
    let report = running.await.unwrap().unwrap();
    assert!(report.interrupted);
    let summary = s.store.summary().await.unwrap();
    assert_eq!(summary.count(Status::Running), 0, "drained");
    assert_eq!(summary.count(Status::Done), report.done);
    assert!(report.done < 10_000);
}
