//! The engine over the in-memory state store, with fake sources and steps (pure engine behaviour:
//! retries, classes, concurrency, ordering of transitions and side effects).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use redrive_core::engine::{
    self, NoReport, Pipeline, PipelineStep, RunOptions, RunReport, StopLevel,
};
use redrive_core::error::{ErrorClass, StepError};
use redrive_core::item::{Fields, Status};
use redrive_core::retry::Backoff;
use redrive_core::source::{Source, SourceError};
use redrive_core::state::memory::MemoryStateStore;
use redrive_core::state::{JobInfo, StateStore};
use redrive_core::step::{Done, Outcome, Settle, Step, StepContext};
use redrive_core::template::{Template, TemplateError};

#[derive(Debug)]
struct Numbers {
    n: usize,
    delay: Duration,
}

impl Source for Numbers {
    fn fields(&self) -> BTreeSet<String> {
        ["n".to_owned()].into()
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
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
        Ok(Outcome::done(1))
    }

    fn describe(&self, _: &Fields) -> Result<String, TemplateError> {
        Ok("flaky".to_owned())
    }
}

/// Checks, in the state, that the previous step's completion is recorded.
#[derive(Debug)]
struct SeesCommittedStep {
    store: Arc<MemoryStateStore>,
    violations: AtomicUsize,
}

#[async_trait]
impl Step for SeesCommittedStep {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let running = self
            .store
            .items_with_status(Status::Running, 0, usize::MAX)
            .await
            .unwrap();
        let item = running.iter().find(|i| i.key == fields["n"]);
        if item.map(|i| i.step) != Some(1) {
            self.violations.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Outcome::done(0))
    }

    fn describe(&self, _: &Fields) -> Result<String, TemplateError> {
        Ok("check".to_owned())
    }
}

struct Setup {
    store: Arc<MemoryStateStore>,
}

async fn setup() -> Setup {
    let store = Arc::new(MemoryStateStore::new());
    store
        .begin(&JobInfo {
            name: "e".into(),
            fingerprint: "f".into(),
            earlier_fingerprints: Vec::new(),
        })
        .await
        .unwrap();
    Setup { store }
}

fn options(concurrency: usize, retries: u32) -> RunOptions {
    RunOptions {
        concurrency,
        per_item: 4,
        retries,
        limit: None,
        retry_failed: false,
        backoff: Backoff {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        },
        throttle_budget: Duration::from_secs(60),
        rate: None,
        reload: false,
        max_errors: None,
    }
}

async fn run(
    store: &Arc<MemoryStateStore>,
    source: Numbers,
    steps: Vec<Arc<dyn Step>>,
    options: RunOptions,
) -> RunReport {
    let pipeline = Arc::new(Pipeline {
        duplicates: Default::default(),
        source: Arc::new(source),
        key: Template::parse("{n}").unwrap(),
        expand: None,
        steps: steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| PipelineStep::new(format!("s{i}"), s))
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
async fn throttling_outlasts_the_retry_count_within_its_time_budget() {
    let s = setup().await;
    let step = Flaky::new(12, ErrorClass::Throttled);
    let report = run(
        &s.store,
        Numbers {
            n: 3,
            delay: Duration::ZERO,
        },
        vec![step],
        options(3, 2),
    )
    .await;
    assert_eq!(
        (report.done, report.failed, report.throttled),
        (3, 0, 36),
        "2 retries allowed, 12 throttles survived"
    );
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
        store: Arc::clone(&s.store),
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
        duplicates: Default::default(),
        source: Arc::new(Numbers {
            n: 50,
            delay: Duration::ZERO,
        }),
        key: Template::parse("{n}").unwrap(),
        expand: None,
        steps: vec![PipelineStep::new("s0", step.clone() as Arc<dyn Step>)],
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

/// Starts a run of `n` numbered items through `step` in the background: its stop requests and
/// its end.
fn start_run(
    store: &Arc<MemoryStateStore>,
    n: usize,
    step: Arc<dyn Step>,
    options: RunOptions,
) -> (
    tokio::sync::watch::Sender<StopLevel>,
    tokio::task::JoinHandle<Result<RunReport, engine::EngineError>>,
) {
    let pipeline = Arc::new(Pipeline {
        duplicates: Default::default(),
        source: Arc::new(Numbers {
            n,
            delay: Duration::ZERO,
        }),
        key: Template::parse("{n}").unwrap(),
        expand: None,
        steps: vec![PipelineStep::new("s0", step)],
    });
    let (stop, shutdown) = tokio::sync::watch::channel(StopLevel::Run);
    let state: Arc<dyn StateStore> = Arc::clone(store) as _;
    let running = tokio::spawn(engine::run(
        pipeline,
        state,
        options,
        Arc::new(NoReport),
        shutdown,
    ));
    (stop, running)
}

#[tokio::test]
async fn a_drain_request_lets_in_flight_items_finish_and_starts_no_more() {
    let s = setup().await;
    let step = Flaky::new(0, ErrorClass::Transient);
    let (stop, running) = start_run(&s.store, 10_000, step.clone(), options(4, 0));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.send(StopLevel::Drain).unwrap();
    let report = running.await.unwrap().unwrap();
    assert!(report.interrupted);
    let summary = s.store.summary().await.unwrap();
    assert_eq!(summary.count(Status::Running), 0, "drained");
    assert_eq!(summary.count(Status::Done), report.done);
    assert!(report.done < 10_000);
}

/// Children of a parent: `children` of them (from the parent's field), named `c0`, `c1`…;
/// counts how often it is asked; fails for a parent named in `fail_for`.
#[derive(Debug)]
struct Children {
    calls: AtomicUsize,
    fail_for: Option<String>,
}

impl Source for Children {
    fn fields(&self) -> BTreeSet<String> {
        ["c".to_owned()].into()
    }

    fn items(&self, context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_for.as_deref() == context.get("n").map(String::as_str) {
            let error = SourceError::Input {
                location: "listing".into(),
                message: "no such prefix".into(),
            };
            return futures::stream::once(async move { Err(error) }).boxed();
        }
        let n: usize = context
            .get("children")
            .and_then(|c| c.parse().ok())
            .unwrap_or(3);
        futures::stream::iter(0..n)
            .map(|i| Ok(Fields::from([("c".to_owned(), format!("c{i}"))])))
            .boxed()
    }
}

/// Parents `0..n`, with `children` = `per_parent` (parent 1 has none when `empty_second`).
#[derive(Debug)]
struct Parents {
    n: usize,
    per_parent: usize,
}

impl Source for Parents {
    fn fields(&self) -> BTreeSet<String> {
        ["n".to_owned(), "children".to_owned()].into()
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        let per_parent = self.per_parent;
        futures::stream::iter(0..self.n)
            .map(move |i| {
                let children = if i == 1 { 0 } else { per_parent };
                Ok(Fields::from([
                    ("n".to_owned(), i.to_string()),
                    ("children".to_owned(), children.to_string()),
                ]))
            })
            .boxed()
    }
}

/// Fails for the child `c1` of parent `2`, counts concurrency per run.
#[derive(Debug, Default)]
struct ChildStep {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    calls: AtomicUsize,
}

#[async_trait]
impl Step for ChildStep {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::task::yield_now().await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if fields["n"] == "2" && fields["c"] == "c1" {
            return Err(StepError::permanent("c1 of 2 is broken"));
        }
        Ok(Outcome::done(1))
    }

    fn describe(&self, _: &Fields) -> Result<String, TemplateError> {
        Ok("child".to_owned())
    }
}

fn expand_pipeline(
    parents: Parents,
    children: Arc<Children>,
    step: Arc<ChildStep>,
) -> Arc<Pipeline> {
    Arc::new(Pipeline {
        duplicates: Default::default(),
        source: Arc::new(parents),
        key: Template::parse("{n}").unwrap(),
        expand: Some(engine::Expansion {
            source: children,
            key: Template::parse("{c}").unwrap(),
        }),
        steps: vec![PipelineStep::new("child", step as Arc<dyn Step>)],
    })
}

async fn run_pipeline(
    store: &Arc<MemoryStateStore>,
    pipeline: Arc<Pipeline>,
    options: RunOptions,
) -> RunReport {
    let (_stop, shutdown) = tokio::sync::watch::channel(StopLevel::Run);
    let state: Arc<dyn StateStore> = Arc::clone(store) as _;
    engine::run(pipeline, state, options, Arc::new(NoReport), shutdown)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_expand_into_children_that_inherit_their_fields() {
    let s = setup().await;
    let children = Arc::new(Children {
        calls: AtomicUsize::new(0),
        fail_for: None,
    });
    let step = Arc::new(ChildStep::default());
    let mut options = options(3, 0);
    options.per_item = 2;
    let report = run_pipeline(
        &s.store,
        expand_pipeline(
            Parents {
                n: 5,
                per_parent: 10,
            },
            children.clone(),
            step.clone(),
        ),
        options,
    )
    .await;
    // Parent 1 has no children (skipped); parent 2 has a failed child (failed).
    assert_eq!((report.done, report.skipped, report.failed), (3, 1, 1));
    assert_eq!((report.children.done, report.children.failed), (39, 1));
    assert!(
        step.max_in_flight.load(Ordering::SeqCst) <= 3 * 2,
        "items × per_item"
    );
    let failed_parents = s.store.parents(&[Status::Failed], 10).await.unwrap();
    let (parent, counts) = failed_parents
        .iter()
        .find(|(p, _)| p.key == "2")
        .expect("parent 2 failed");
    assert_eq!(
        (counts.total, counts.failed, parent.error.as_deref()),
        (10, 1, Some("1 of 10 children failed"))
    );
    let done = s
        .store
        .items_with_status(Status::Done, 0, usize::MAX)
        .await
        .unwrap();
    let c4 = done
        .iter()
        .find(|i| i.parent_key.as_deref() == Some("3") && i.key == "c4")
        .expect("child c4 of parent 3 done");
    assert_eq!(
        c4.fields["n"], "3",
        "the child inherits its parent's fields"
    );
    let failed = s
        .store
        .items_with_status(Status::Failed, 0, usize::MAX)
        .await
        .unwrap();
    let failed: Vec<&str> = failed.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(
        failed,
        ["c1"],
        "the failed list names the child, not its parent"
    );
    assert_eq!(
        children.calls.load(Ordering::SeqCst),
        5,
        "each parent listed once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_parent_is_not_listed_again_and_retry_failed_redoes_only_the_failed_child() {
    let s = setup().await;
    let children = Arc::new(Children {
        calls: AtomicUsize::new(0),
        fail_for: None,
    });
    let step = Arc::new(ChildStep::default());
    run_pipeline(
        &s.store,
        expand_pipeline(
            Parents {
                n: 4,
                per_parent: 5,
            },
            children.clone(),
            step.clone(),
        ),
        options(2, 0),
    )
    .await;
    assert_eq!(children.calls.load(Ordering::SeqCst), 4);
    let calls_before = step.calls.load(Ordering::SeqCst);
    let mut retry = options(2, 0);
    retry.retry_failed = true;
    let report = run_pipeline(
        &s.store,
        expand_pipeline(
            Parents {
                n: 4,
                per_parent: 5,
            },
            children.clone(),
            step.clone(),
        ),
        retry,
    )
    .await;
    assert_eq!(
        children.calls.load(Ordering::SeqCst),
        4,
        "no second listing"
    );
    assert_eq!(
        step.calls.load(Ordering::SeqCst) - calls_before,
        1,
        "only the failed child ran"
    );
    assert_eq!(report.failed, 1, "it fails again, and so does its parent");
}

#[tokio::test]
async fn a_failed_expansion_fails_its_parent_and_is_listed_again_with_retry_failed() {
    let s = setup().await;
    let children = Arc::new(Children {
        calls: AtomicUsize::new(0),
        fail_for: Some("3".into()),
    });
    let step = Arc::new(ChildStep::default());
    let report = run_pipeline(
        &s.store,
        expand_pipeline(
            Parents {
                n: 4,
                per_parent: 2,
            },
            children.clone(),
            step.clone(),
        ),
        options(2, 3),
    )
    .await;
    assert_eq!(
        report.failed, 2,
        "parent 3 (its listing) and parent 2 (its child c1)"
    );
    let failed = s
        .store
        .items_with_status(Status::Failed, 0, 10)
        .await
        .unwrap();
    let parent = failed
        .iter()
        .find(|item| item.key == "3")
        .expect("parent 3 is listed as failed");
    assert!(!parent.expanded);
    assert_eq!(
        parent.error.as_deref(),
        Some("cannot list the children of `3`: listing: no such prefix")
    );
    let calls = children.calls.load(Ordering::SeqCst);
    let mut retry = options(2, 0);
    retry.retry_failed = true;
    run_pipeline(
        &s.store,
        expand_pipeline(
            Parents {
                n: 4,
                per_parent: 2,
            },
            children.clone(),
            step,
        ),
        retry,
    )
    .await;
    assert_eq!(
        children.calls.load(Ordering::SeqCst),
        calls + 1,
        "the failed expansion is tried again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_with_100k_children_runs_them_all_in_pages() {
    let s = setup().await;
    let children = Arc::new(Children {
        calls: AtomicUsize::new(0),
        fail_for: None,
    });
    let step = Arc::new(ChildStep::default());
    let mut options = options(1, 0);
    options.per_item = 64;
    let parents = Parents {
        n: 1,
        per_parent: 100_000,
    };
    let report = run_pipeline(
        &s.store,
        expand_pipeline(parents, children, step.clone()),
        options,
    )
    .await;
    assert_eq!((report.done, report.children.done), (1, 100_000));
    assert!(step.max_in_flight.load(Ordering::SeqCst) <= 64);
}

/// Fails every item with a systemic error (a closed port), except item `0` when `first_works`.
#[derive(Debug)]
struct Unreachable {
    first_works: bool,
    calls: AtomicUsize,
}

#[async_trait]
impl Step for Unreachable {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.first_works && fields["n"] == "0" {
            return Ok(Outcome::done(1));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        Err(StepError::new(ErrorClass::Transient, "connection refused").systemic())
    }

    fn describe(&self, _: &Fields) -> Result<String, TemplateError> {
        Ok("unreachable".to_owned())
    }
}

fn unreachable_pipeline(step: &Arc<Unreachable>, n: usize) -> Arc<Pipeline> {
    Arc::new(Pipeline {
        duplicates: Default::default(),
        source: Arc::new(Numbers {
            n,
            delay: Duration::ZERO,
        }),
        key: Template::parse("{n}").unwrap(),
        expand: None,
        steps: vec![PipelineStep::new("s0", Arc::clone(step) as Arc<dyn Step>)],
    })
}

#[tokio::test]
async fn a_step_that_fails_systemically_from_the_start_stops_the_run_with_items_pending() {
    let s = setup().await;
    let step = Arc::new(Unreachable {
        first_works: false,
        calls: AtomicUsize::new(0),
    });
    let (_stop, shutdown) = tokio::sync::watch::channel(StopLevel::Run);
    let state: Arc<dyn StateStore> = Arc::clone(&s.store) as _;
    let result = engine::run(
        unreachable_pipeline(&step, 50),
        state,
        options(4, 5),
        Arc::new(NoReport),
        shutdown,
    )
    .await;
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("stopping the run"), "{message}");
    assert!(
        step.calls.load(Ordering::SeqCst) <= 8,
        "{} calls: a few, not every item with its retries",
        step.calls.load(Ordering::SeqCst)
    );
    let summary = s.store.summary().await.unwrap();
    assert_eq!(summary.count(Status::Failed), 0);
    assert_eq!(summary.count(Status::Pending), 50);
}

#[tokio::test]
async fn systemic_errors_after_a_success_are_retried_and_fail_items_as_usual() {
    let s = setup().await;
    let step = Arc::new(Unreachable {
        first_works: true,
        calls: AtomicUsize::new(0),
    });
    let (_stop, shutdown) = tokio::sync::watch::channel(StopLevel::Run);
    let state: Arc<dyn StateStore> = Arc::clone(&s.store) as _;
    let report = engine::run(
        unreachable_pipeline(&step, 5),
        state,
        options(1, 2),
        Arc::new(NoReport),
        shutdown,
    )
    .await
    .unwrap();
    assert_eq!((report.done, report.failed), (1, 4));
    assert_eq!(step.calls.load(Ordering::SeqCst), 1 + 4 * 3);
}

/// Leaves the end of its work to settle ([`Settle`]): each item's end waits until the next
/// item's step has run (which it can only once this item's slot is given back), checks the
/// item is not yet recorded, and fails item 1.
#[derive(Debug)]
struct Settling {
    store: Arc<MemoryStateStore>,
    n: usize,
    /// How long an item's end waits for the next item's step, in ms.
    patience: u64,
    ran: Arc<AtomicUsize>,
    overlapped: Arc<AtomicUsize>,
    recorded_early: Arc<AtomicUsize>,
}

#[async_trait]
impl Step for Settling {
    async fn run(&self, fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let index: usize = fields["n"].parse().unwrap();
        self.ran.fetch_add(1, Ordering::SeqCst);
        let (store, n, ran) = (Arc::clone(&self.store), self.n, Arc::clone(&self.ran));
        let patience = self.patience;
        let (overlapped, early) = (
            Arc::clone(&self.overlapped),
            Arc::clone(&self.recorded_early),
        );
        let key = fields["n"].clone();
        let rest = async move {
            if index + 1 < n {
                for _ in 0..patience {
                    if ran.load(Ordering::SeqCst) > index + 1 {
                        overlapped.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            let running = store
                .items_with_status(Status::Running, 0, usize::MAX)
                .await
                .unwrap();
            if !running.iter().any(|i| i.key == key) {
                early.fetch_add(1, Ordering::SeqCst);
            }
            if index == 1 {
                return Err(StepError::permanent("cannot make it durable"));
            }
            Ok(Outcome::done(1))
        };
        Ok(Outcome::Done(Done {
            settle: Some(Settle::new(rest)),
            ..Done::default()
        }))
    }

    fn describe(&self, _: &Fields) -> Result<String, TemplateError> {
        Ok("settling".to_owned())
    }
}

/// Runs three items through a [`Settling`] step, one in flight.
async fn run_settling(
    s: &Setup,
    patience: u64,
    max_errors: Option<u64>,
) -> (Arc<Settling>, RunReport) {
    let step = Arc::new(Settling {
        store: Arc::clone(&s.store),
        n: 3,
        patience,
        ran: Arc::new(AtomicUsize::new(0)),
        overlapped: Arc::new(AtomicUsize::new(0)),
        recorded_early: Arc::new(AtomicUsize::new(0)),
    });
    let source = Numbers {
        n: 3,
        delay: Duration::ZERO,
    };
    let options = RunOptions {
        max_errors,
        ..options(1, 0)
    };
    let report = run(&s.store, source, vec![step.clone()], options).await;
    (step, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_step_settles_outside_its_slot_and_is_recorded_only_once_settled() {
    let s = setup().await;
    let (step, report) = run_settling(&s, 5000, None).await;
    // One item in flight, yet items 0 and 1 settled while the next item's step ran.
    assert_eq!(step.overlapped.load(Ordering::SeqCst), 2);
    assert_eq!(step.recorded_early.load(Ordering::SeqCst), 0);
    assert_eq!((report.done, report.failed), (2, 1));
    let failed = s
        .store
        .items_with_status(Status::Failed, 0, usize::MAX)
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cannot make it durable")),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_max_errors_an_item_keeps_its_slot_until_settled_so_its_failure_stops_the_run_first() {
    let s = setup().await;
    let (step, report) = run_settling(&s, 300, Some(1)).await;
    // Item 1 fails while settling: item 2 never starts.
    assert_eq!(step.overlapped.load(Ordering::SeqCst), 0);
    assert_eq!(step.ran.load(Ordering::SeqCst), 2);
    assert_eq!((report.done, report.failed), (1, 1));
    assert!(report.max_errors_reached);
}

/// Sleeps `delay` an item, and notes the most items the state said were `running` at once.
#[derive(Debug)]
struct WatchesRunning {
    store: Arc<MemoryStateStore>,
    delay: Duration,
    calls: AtomicUsize,
    most_running: AtomicUsize,
    /// Looks at the state on every `every`th call (a look reads every item under the store's
    /// lock: on a busy machine, looking on every call made the items themselves long).
    every: usize,
}

impl WatchesRunning {
    fn new(store: &Arc<MemoryStateStore>, delay: Duration) -> Arc<Self> {
        Self::looking_every(store, delay, 1)
    }

    fn looking_every(store: &Arc<MemoryStateStore>, delay: Duration, every: usize) -> Arc<Self> {
        Arc::new(Self {
            store: Arc::clone(store),
            delay,
            calls: AtomicUsize::new(0),
            most_running: AtomicUsize::new(0),
            every,
        })
    }
}

#[async_trait]
impl Step for WatchesRunning {
    async fn run(&self, _fields: &Fields, _cx: &StepContext<'_>) -> Result<Outcome, StepError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call.is_multiple_of(self.every) {
            let running = self.store.summary().await.unwrap().count(Status::Running);
            self.most_running
                .fetch_max(running as usize, Ordering::SeqCst);
        }
        tokio::time::sleep(self.delay).await;
        Ok(Outcome::done(0))
    }

    fn describe(&self, _: &Fields) -> Result<String, TemplateError> {
        Ok("watch".to_owned())
    }
}

/// Every item's attempts against its status: items that ran once have 1, the others 0.
async fn assert_attempts_honest(store: &MemoryStateStore) {
    for status in [Status::Done, Status::Pending, Status::Running] {
        let items = store
            .items_with_status(status, 0, usize::MAX)
            .await
            .unwrap();
        let expected = u32::from(status == Status::Done);
        for item in items {
            assert_eq!(
                item.attempts, expected,
                "{status:?} item {} has {} attempts",
                item.key, item.attempts
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_items_have_their_starts_recorded_ahead_of_free_slots_and_long_ones_do_not() {
    // Short items: once the engine has seen a few, up to one slot's worth of items more is
    // recorded started, so a freed slot takes an item whose start is committed.
    let s = setup().await;
    let step = WatchesRunning::new(&s.store, Duration::ZERO);
    let source = Numbers {
        n: 400,
        delay: Duration::ZERO,
    };
    let report = run(&s.store, source, vec![step.clone()], options(4, 0)).await;
    assert_eq!((report.done, step.calls.load(Ordering::SeqCst)), (400, 400));
    let most = step.most_running.load(Ordering::SeqCst);
    // 4 in flight, up to 4 started ahead, and a few finished whose last transition is
    // queued and not yet committed (their slots already went to the next items).
    assert!(
        (5..=12).contains(&most),
        "4 in flight and up to 4 started ahead, saw {most} running"
    );
    assert_attempts_honest(&s.store).await;

    // Long items (30 ms): a start is recorded only when a slot is about to free.
    let s = setup().await;
    let step = WatchesRunning::new(&s.store, Duration::from_millis(30));
    let source = Numbers {
        n: 24,
        delay: Duration::ZERO,
    };
    let report = run(&s.store, source, vec![step.clone()], options(4, 0)).await;
    assert_eq!(report.done, 24);
    let most = step.most_running.load(Ordering::SeqCst);
    // (One more than the slots can read `running` for a moment: a finished item's last
    // transition is applied just after its slot goes to the next item.)
    assert!(most <= 5, "4 in flight and none ahead, saw {most} running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_started_ahead_that_never_ran_go_back_to_pending_uncounted() {
    // A drain: the items started ahead of a slot are put back, their attempt not counted.
    let s = setup().await;
    // Items that take next to no time, so starts go ahead however busy the machine is (with
    // 1 ms ones, each looking at the state, a loaded machine made them look long and none went
    // ahead); drained once some did.
    let step = WatchesRunning::looking_every(&s.store, Duration::ZERO, 8);
    let (stop, running) = start_run(&s.store, 5_000, step.clone(), options(8, 0));
    while step.calls.load(Ordering::SeqCst) < 300
        || (step.most_running.load(Ordering::SeqCst) <= 8
            && step.calls.load(Ordering::SeqCst) < 2_500)
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.send(StopLevel::Drain).unwrap();
    let report = running.await.unwrap().unwrap();
    assert!(report.interrupted && report.done < 5_000);
    assert!(
        step.most_running.load(Ordering::SeqCst) > 8,
        "items were started ahead (else this tests nothing): {} running at most",
        step.most_running.load(Ordering::SeqCst)
    );
    let summary = s.store.summary().await.unwrap();
    assert_eq!(
        summary.count(Status::Running),
        0,
        "drained, none left running"
    );
    assert_eq!(step.calls.load(Ordering::SeqCst) as u64, report.done);
    assert_attempts_honest(&s.store).await;

    // `--limit`: exactly that many run; what was started beyond it goes back.
    let s = setup().await;
    let step = WatchesRunning::new(&s.store, Duration::from_millis(1));
    let source = Numbers {
        n: 1_000,
        delay: Duration::ZERO,
    };
    let limited = RunOptions {
        limit: Some(300),
        ..options(8, 0)
    };
    let report = run(&s.store, source, vec![step.clone()], limited).await;
    assert_eq!((report.done, step.calls.load(Ordering::SeqCst)), (300, 300));
    let summary = s.store.summary().await.unwrap();
    assert_eq!(summary.count(Status::Running), 0);
    assert_eq!(summary.count(Status::Pending), 700);
    assert_attempts_honest(&s.store).await;
}

/// A source that makes the loader wait a moment before every row, as a local folder's listing
/// does (each entry's metadata is read on another thread).
#[derive(Debug)]
struct Hesitant {
    n: usize,
}

impl Source for Hesitant {
    fn fields(&self) -> BTreeSet<String> {
        ["n".to_owned()].into()
    }

    fn items(&self, _context: &Fields) -> BoxStream<'static, Result<Fields, SourceError>> {
        futures::stream::iter(0..self.n)
            .then(|i| async move {
                tokio::task::yield_now().await;
                Ok(Fields::from([("n".to_owned(), i.to_string())]))
            })
            .boxed()
    }
}

/// Counts the loader's hand-overs to the state (one insert each) and the rows they carried.
#[derive(Default)]
struct CountsLoads {
    hand_overs: AtomicUsize,
    rows: AtomicUsize,
}

impl engine::Reporter for CountsLoads {
    fn loaded(&self, n: u64) {
        self.hand_overs.fetch_add(1, Ordering::SeqCst);
        self.rows.fetch_add(n as usize, Ordering::SeqCst);
    }
    fn finished(&self, _status: Status) {}
    fn bytes(&self, _n: u64) {}
    fn retried(&self, _step: &str, _throttled: bool) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_waits_before_every_row_is_still_loaded_in_batches() {
    // Handed over at every wait, each row was its own load transaction (and target claim):
    // `redrive cp` of a local folder of 20,000 files loaded 2,000 rows a second.
    let s = setup().await;
    let step = Flaky::new(0, ErrorClass::Transient);
    let pipeline = Arc::new(Pipeline {
        duplicates: Default::default(),
        source: Arc::new(Hesitant { n: 5_000 }),
        key: Template::parse("{n}").unwrap(),
        expand: None,
        steps: vec![PipelineStep::new("s0".to_owned(), step.clone())],
    });
    let (_stop, shutdown) = tokio::sync::watch::channel(StopLevel::Run);
    let state: Arc<dyn StateStore> = Arc::clone(&s.store) as _;
    let loads = Arc::new(CountsLoads::default());
    let report = engine::run(pipeline, state, options(16, 0), loads.clone(), shutdown)
        .await
        .unwrap();
    assert_eq!(report.done, 5_000);
    assert_eq!(loads.rows.load(Ordering::SeqCst), 5_000);
    let hand_overs = loads.hand_overs.load(Ordering::SeqCst);
    assert!(
        hand_overs <= 100,
        "{hand_overs} hand-overs for 5,000 rows: a batch a row"
    );
}
