//! The engine: loads the source into the state, then runs each runnable item's steps with
//! bounded concurrency, recording every transition before the item's next step.
//!
//! By concern: this module holds the pipeline, the options and the run loop (claim a page of
//! runnable items, start each under the concurrency limit, stop on request); `load` reads
//! the source into the state; `item` takes one item through its steps; `expand` lists and
//! runs a parent's children; `report` is what a run tells; `dry_run` prints what it would do.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::error::StepError;
use crate::item::{Fields, ItemId, Status};
use crate::retry::Backoff;
use crate::source::{Source, SourceError};
use crate::state::{StateError, StateStore};
use crate::step::{ByteCounter, ObjectProgress, Step, StepTraits};
use crate::template::{Template, TemplateError};
use crate::throttle::{AdaptiveLimit, Rate};

mod dry_run;
mod expand;
mod feed;
mod item;
mod load;
mod report;
mod step_times;

pub use dry_run::{DryRunOptions, DryRunReport, dry_run};
use expand::run_parent;
use feed::{Credits, First, Slot, Starter};
use item::{all_ran, run_started};
use load::{load, load_or_wait};
use report::ItemReport;
pub use report::{NoReport, Reporter, RunReport, StepEvent, StepStatus, Tally};

/// The loader is still reading the source.
const LOADING: u8 = 0;
/// The loader read the whole source and recorded that in the state.
const ENDED_COMPLETE: u8 = 1;
/// The loader stopped before the end of the source.
const ENDED_EARLY: u8 = 2;

/// Items per state insert while loading the source.
const LOAD_BATCH: usize = 1_000;
/// Items per state read while running.
const PAGE: usize = 512;

/// A plan made runnable: the source, the key template and the steps, built.
#[derive(Debug)]
pub struct Pipeline {
    /// The work list.
    pub source: Arc<dyn Source>,
    /// Renders an item's key from its fields.
    pub key: Template,
    /// Turns each item into children; the steps then run for each child.
    pub expand: Option<Expansion>,
    /// The steps, in order.
    pub steps: Vec<PipelineStep>,
    /// What a load does with a row whose key an earlier row had, with other fields.
    pub duplicates: Duplicates,
}

/// `[source] duplicates`: what a load does with a row whose key an earlier row had, with other
/// fields (a row repeated exactly is the same work either way, and runs once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Duplicates {
    /// Stop the load and the run before it goes further, naming both rows: the plan's `key`
    /// does not tell them apart, and one row's work would be lost in silence.
    #[default]
    Error,
    /// The first row is the item; the later ones are left out, counted and said.
    First,
}

/// One built step of a pipeline.
#[derive(Debug)]
pub struct PipelineStep {
    /// Its name (unique in the plan), as recorded in the state.
    pub name: String,
    /// The runtime object.
    pub step: Arc<dyn Step>,
    /// What it needs from the engine.
    pub traits: StepTraits,
    /// The one object it writes for an item (`copy.to`): each item claims it, as it loads
    /// or (for a target from bound fields) when it reaches the step, and two items that
    /// would write one object are refused (see [`EngineError::SameTarget`]).
    pub target: Option<StepTarget>,
}

/// The one object a step writes for an item: the template that names it, and the store's own
/// name for what the template renders, so two spellings of one object are one target (a
/// local path's `out//a` and `out/./a` are `…/out/a`; an object key is taken as it is).
#[derive(Clone)]
pub struct StepTarget {
    /// `copy.to`.
    pub template: Template,
    /// The store's name of a rendered target.
    pub name: Arc<dyn Fn(&str) -> String + Send + Sync>,
    /// It renders from fields an earlier step binds (`require`'s `input`, an `xml` step's
    /// fields): claimed when the item reaches the step, and a target another key holds fails
    /// the item; otherwise claimed as the item loads, and the run stops.
    pub bound: bool,
}

impl StepTarget {
    /// The name of the object this step writes for an item with `fields`; `None` when the
    /// template does not render (the item fails at its step, saying why).
    pub fn of(&self, fields: &Fields) -> Option<String> {
        self.template
            .render(fields)
            .ok()
            .map(|rendered| (self.name)(&rendered))
    }
}

impl std::fmt::Debug for StepTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepTarget")
            .field("template", &self.template)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl PipelineStep {
    /// A step with default traits (paced by the engine, no bound fields, no batches).
    pub fn new(name: impl Into<String>, step: Arc<dyn Step>) -> Self {
        Self {
            name: name.into(),
            step,
            traits: StepTraits::default(),
            target: None,
        }
    }
}

/// `[expand]`, built: a source run with each parent's fields, and the children's key.
#[derive(Debug)]
pub struct Expansion {
    /// Lists a parent's children.
    pub source: Arc<dyn Source>,
    /// Renders a child's key (unique within its parent) from its fields.
    pub key: Template,
}

/// Name recorded as the step of a parent while it expands and runs its children.
pub const EXPAND_STEP: &str = "expand";

/// Knobs of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Items in flight (parents, under `[expand]`).
    pub concurrency: usize,
    /// Children in flight per parent.
    pub per_item: usize,
    /// Retries per step after the first attempt.
    pub retries: u32,
    /// Start at most this many items in this run.
    pub limit: Option<u64>,
    /// Put failed items back to pending first.
    pub retry_failed: bool,
    /// Delay between retries.
    pub backoff: Backoff,
    /// How long a step may keep being throttled (429, SlowDown) before its item fails.
    pub throttle_budget: Duration,
    /// Step calls per second at most, across the run (`--rate`), for steps that do not pace
    /// themselves.
    pub rate: Option<f64>,
    /// Read a completely loaded source again for new items (`--reload`), even when it cannot
    /// tell that it changed.
    pub reload: bool,
    /// Stop starting items once this many have failed in this run (`--max-errors`).
    pub max_errors: Option<u64>,
}

/// Default time a step may be throttled before its item fails.
pub const THROTTLE_BUDGET: Duration = Duration::from_secs(15 * 60);

/// How far a stop request has gone: see [`Shutdown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopLevel {
    /// Keep going.
    Run,
    /// Take no new items; let the in-flight ones finish (first Ctrl-C).
    Drain,
    /// Abandon the in-flight items now (second Ctrl-C); they resume on the next run.
    Abort,
}

/// Stop requests, sent by the CLI's signal handler.
pub type Shutdown = watch::Receiver<StopLevel>;

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Progress can no longer be recorded.
    #[error(transparent)]
    State(#[from] StateError),
    /// The source failed (a malformed row, an unreadable listing).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// An item's key could not be rendered.
    #[error("cannot make the key of an item")]
    Key(#[source] TemplateError),
    /// Two rows of the source have the same key and other fields: the plan's `key` does not
    /// tell their work apart.
    #[error(
        "the source has two rows with the key `{key}` and other fields: first {first}, then {again}; the plan's `key` does not tell them apart"
    )]
    DuplicateKey {
        /// The key, secrets masked.
        key: String,
        /// The fields of the row recorded first.
        first: String,
        /// The fields of the row that came again.
        again: String,
    },
    /// Two items of the source render one step's target to the same object: the second
    /// would overwrite the first or be skipped, and one item's work would be lost.
    #[error(
        "items `{first}` and `{again}` both write `{target}` (step `{step}`); the target template does not tell them apart"
    )]
    SameTarget {
        /// The step's name.
        step: String,
        /// The target, secrets masked.
        target: String,
        /// The key that claimed it first, secrets masked.
        first: String,
        /// The key that came again, secrets masked.
        again: String,
    },
    /// The loader was told to stop before the end of the source (the run is ending).
    #[error("the source was not read to the end")]
    Stopped,
    /// A step reported an error that no other item can get past (e.g. bad credentials).
    #[error("step `{step}` failed for `{key}`, stopping the run")]
    Fatal {
        /// The step.
        step: String,
        /// The item.
        key: String,
        /// The error.
        #[source]
        source: StepError,
    },
}

struct Shared {
    /// Set by an item that hit a fatal error, before it releases its permit: start no more.
    halt: AtomicBool,
    /// Rows of a first load whose key an earlier row already had with other fields (see
    /// `RunReport`).
    duplicate_keys: std::sync::atomic::AtomicU64,
    /// Rows of a first load that repeated an earlier row exactly.
    repeated_rows: std::sync::atomic::AtomicU64,
    /// Rows with a known key and other fields, left out by `duplicates = "first"`.
    dropped_duplicates: std::sync::atomic::AtomicU64,
    /// Items failed in this run, against `--max-errors`.
    failed: std::sync::atomic::AtomicU64,
    /// `--max-errors` was reached: no item was started after.
    too_many_errors: AtomicBool,
    pipeline: Arc<Pipeline>,
    state: Arc<dyn StateStore>,
    reporter: Arc<dyn Reporter>,
    options: RunOptions,
    /// One adaptive limit per step (each step talks to one endpoint); `None` for a step that
    /// paces itself.
    limits: Vec<Option<Arc<AdaptiveLimit>>>,
    /// `--rate`.
    rate: Option<Rate>,
    /// How each step's calls have gone so far, to stop a run whose step cannot work at all.
    health: Vec<StepHealth>,
    /// How long the steps took, until added to the state.
    step_times: Arc<step_times::Gathered>,
}

/// Systemic failures (see [`StepError::systemic`]) of a step that has not yet succeeded once
/// that stop the run: a closed port or refused credentials fail every item the same way, and
/// retrying each of them took minutes to say so.
const FAIL_FAST_AFTER: u32 = 3;

/// Whether a step has worked at all in this run.
#[derive(Default)]
struct StepHealth {
    succeeded: AtomicBool,
    systemic: std::sync::atomic::AtomicU32,
}

impl StepHealth {
    fn succeeded(&self) {
        if !self.succeeded.load(Ordering::Relaxed) {
            self.succeeded.store(true, Ordering::Relaxed);
        }
    }

    /// Counts a systemic failure; true when the step has now failed that way often enough,
    /// without one success, that the run should stop.
    fn failed_systemically(&self) -> bool {
        !self.succeeded.load(Ordering::Relaxed)
            && self.systemic.fetch_add(1, Ordering::Relaxed) + 1 >= FAIL_FAST_AFTER
    }
}

struct Counter<'a>(&'a dyn Reporter);

impl ByteCounter for Counter<'_> {
    fn add(&self, n: u64) {
        self.0.bytes(n);
    }

    fn object(&self, name: &str, size: Option<u64>) -> Option<Box<dyn ObjectProgress>> {
        self.0.object(name, size)
    }
}

/// Runs the pipeline over the state: resumes where the state left off.
pub async fn run(
    pipeline: Arc<Pipeline>,
    state: Arc<dyn StateStore>,
    options: RunOptions,
    reporter: Arc<dyn Reporter>,
    mut shutdown: Shutdown,
) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    if options.retry_failed {
        state.requeue(crate::state::Requeue::Failed).await?;
    }
    // Steps run at most `concurrency` at once (times `per_item` under `[expand]`); the
    // adaptive limit starts there and only comes down when an endpoint throttles.
    let ceiling = if pipeline.expand.is_some() {
        options.concurrency.max(1) * options.per_item.max(1)
    } else {
        options.concurrency.max(1)
    };
    let limits = pipeline
        .steps
        .iter()
        .map(|step| (!step.traits.paces_itself).then(|| Arc::new(AdaptiveLimit::new(ceiling))))
        .collect();
    let rate = options.rate.and_then(Rate::per_second);
    let health = (0..pipeline.steps.len())
        .map(|_| StepHealth::default())
        .collect();
    let step_times = Arc::new(step_times::Gathered::new(
        pipeline.steps.iter().map(|s| s.name.as_str()),
    ));
    let shared = Arc::new(Shared {
        halt: AtomicBool::new(false),
        duplicate_keys: std::sync::atomic::AtomicU64::new(0),
        repeated_rows: std::sync::atomic::AtomicU64::new(0),
        dropped_duplicates: std::sync::atomic::AtomicU64::new(0),
        failed: std::sync::atomic::AtomicU64::new(0),
        too_many_errors: AtomicBool::new(false),
        pipeline,
        state,
        reporter,
        options,
        limits,
        rate,
        health,
        step_times,
    });
    let limits: Vec<(String, Arc<AdaptiveLimit>)> = shared
        .pipeline
        .steps
        .iter()
        .zip(&shared.limits)
        .filter_map(|(step, limit)| Some((step.name.clone(), Arc::clone(limit.as_ref()?))))
        .collect();
    shared.reporter.limits(&limits);
    let adding_step_times =
        step_times::Adding::start(Arc::clone(&shared.step_times), Arc::clone(&shared.state));

    // The loader adds the source's items to the state while the runner works through them.
    // It publishes how it ended only after its last insert is committed, so a runner that
    // reads `ENDED_*` before its query sees every item.
    let loaded = Arc::new(Notify::new());
    let loader_end = Arc::new(AtomicU8::new(LOADING));
    let (stop_loader, stop_loader_rx) = watch::channel(false);
    // A complete source is read again when it changed since (rows appended to a CSV) or when
    // asked: its new items are added, the known ones ignored.
    let complete = shared.state.source_complete().await? && {
        let now = shared.pipeline.source.revision();
        let changed = now.is_some() && shared.state.source_revision().await? != now;
        if changed {
            tracing::warn!(
                "The source changed since it was loaded: reading it again for new items."
            );
        }
        !(changed || shared.options.reload)
    };
    let loader = if complete {
        loader_end.store(ENDED_COMPLETE, Ordering::SeqCst);
        None
    } else {
        let shared = Arc::clone(&shared);
        let loaded = Arc::clone(&loaded);
        let end = Arc::clone(&loader_end);
        Some(tokio::spawn(async move {
            // One process loads a shared job; the others wait for the source to be complete,
            // and take the role over if its holder dies first.
            let result = match load_or_wait(&shared, &loaded, stop_loader_rx.clone()).await {
                Ok(true) => load(&shared, &loaded, stop_loader_rx).await,
                Ok(false) => Ok(()),
                Err(error) => Err(error),
            };
            let ended = if result.is_ok() {
                ENDED_COMPLETE
            } else {
                ENDED_EARLY
            };
            end.store(ended, Ordering::SeqCst);
            loaded.notify_waiters();
            result
        }))
    };

    // The starter records starts (ahead of free slots while items are short, see `feed`);
    // this loop gives each started item a free slot.
    let concurrency = shared.options.concurrency.max(1);
    let semaphore = Arc::new(Semaphore::new(concurrency));
    let ahead = if shared.pipeline.expand.is_some() {
        0
    } else {
        concurrency
    };
    let credits = Credits::new(concurrency, ahead);
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
    let (stop_starter, stop_rx) = watch::channel(false);
    let starter = tokio::spawn(
        Starter {
            shared: Arc::clone(&shared),
            credits: Arc::clone(&credits),
            loaded: Arc::clone(&loaded),
            loader_end: Arc::clone(&loader_end),
            ready: ready_tx,
            stop: stop_rx,
        }
        .run(),
    );
    let mut tasks: JoinSet<Result<ItemReport, EngineError>> = JoinSet::new();
    let mut report = RunReport::default();
    let mut failure: Option<EngineError> = None;
    let mut batch = std::collections::VecDeque::new();
    let mut left: Vec<feed::Ready> = Vec::new();

    loop {
        if *shutdown.borrow() != StopLevel::Run {
            report.interrupted = true;
            break;
        }
        while let Some(joined) = tasks.try_join_next() {
            if let Err(error) = absorb(joined, &mut report) {
                failure = Some(error);
            }
        }
        if failure.is_some() {
            break;
        }
        let next = match batch.pop_front() {
            Some(next) => next,
            None => {
                let group = tokio::select! {
                    group = ready.recv() => group,
                    _ = stop_requested(&mut shutdown, StopLevel::Drain) => {
                        report.interrupted = true;
                        break;
                    }
                };
                // The starter ended: nothing is left to start (or it failed, said below).
                let Some(group) = group else { break };
                match group.await {
                    Ok(group) => batch.extend(group),
                    Err(join) => {
                        failure.get_or_insert(EngineError::State(StateError::Backend {
                            location: "engine".to_owned(),
                            message: format!("recording starts stopped: {join}"),
                        }));
                        break;
                    }
                }
                continue;
            }
        };
        let permit = tokio::select! {
            permit = Arc::clone(&semaphore).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => {
                    left.push(next);
                    break;
                }
            },
            _ = stop_requested(&mut shutdown, StopLevel::Drain) => {
                report.interrupted = true;
                left.push(next);
                break;
            }
        };
        if shared.halt.load(Ordering::SeqCst) {
            left.push(next);
            break;
        }
        let (item, first, slot) = next.into_slot(permit, &credits);
        let (own, own_shutdown, own_slot) =
            (Arc::clone(&shared), shutdown.clone(), Arc::clone(&slot));
        spawn_item(&mut tasks, &shared, item.id, slot, async move {
            match first? {
                First::Step(first) => run_started(&own, item, first, own_shutdown, &own_slot).await,
                First::AllRan => all_ran(&own, &item).await,
                First::Parent => run_parent(&own, item, own_shutdown).await,
            }
        });
    }

    // The starter stops; what it started and no slot took goes back to `pending`.
    let _ = stop_starter.send(true);
    match starter.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            failure.get_or_insert(error);
        }
        Err(join) => {
            failure.get_or_insert(EngineError::State(StateError::Backend {
                location: "engine".to_owned(),
                message: format!("the starter stopped: {join}"),
            }));
        }
    }
    left.extend(batch);
    while let Ok(group) = ready.try_recv() {
        if let Ok(group) = group.await {
            left.extend(group);
        }
    }
    if let Err(error) = feed::unstart(&shared, left).await {
        failure.get_or_insert(EngineError::State(error));
    }

    // Drain: let in-flight items finish, unless a second stop request aborts them.
    let _ = stop_loader.send(true);
    if *shutdown.borrow() == StopLevel::Abort {
        tasks.abort_all();
    }
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(joined) => {
                    if let Err(error) = absorb(joined, &mut report) {
                        failure.get_or_insert(error);
                    }
                }
                None => break,
            },
            _ = stop_requested(&mut shutdown, StopLevel::Abort), if *shutdown.borrow() != StopLevel::Abort => {
                report.interrupted = true;
                tasks.abort_all();
            }
        }
    }
    if *shutdown.borrow() != StopLevel::Run {
        report.interrupted = true;
    }
    if let Some(loader) = loader {
        match loader.await {
            Ok(Ok(())) | Ok(Err(EngineError::Stopped)) => {}
            Ok(Err(error)) => {
                failure.get_or_insert(error);
            }
            Err(join) if join.is_cancelled() => {}
            Err(join) => {
                failure.get_or_insert(EngineError::State(StateError::Backend {
                    location: "loader".to_owned(),
                    message: join.to_string(),
                }));
            }
        }
    }
    adding_step_times.finish().await;
    shared.state.flush().await?;
    // Best effort: leases not given back expire on their own.
    let _ = shared.state.release_claims().await;
    report.duration = started.elapsed();
    report.duplicate_keys = shared.duplicate_keys.load(Ordering::Relaxed);
    report.repeated_rows = shared.repeated_rows.load(Ordering::Relaxed);
    report.dropped_duplicates = shared.dropped_duplicates.load(Ordering::Relaxed);
    report.max_errors_reached = shared.too_many_errors.load(Ordering::SeqCst);
    report.limits = shared
        .pipeline
        .steps
        .iter()
        .zip(&shared.limits)
        .filter_map(|(step, limit)| Some((step.name.clone(), limit.as_ref()?.report())))
        .collect();
    match failure {
        Some(error) => Err(error),
        None => Ok(report),
    }
}

/// Waits until a stop at `level` or beyond is requested. A dropped sender means no request
/// will ever come: wait forever rather than report a stop.
async fn stop_requested(shutdown: &mut Shutdown, level: StopLevel) {
    loop {
        if *shutdown.borrow_and_update() >= level {
            return;
        }
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Runs one item's task: an item another worker took over (this one's lease had expired while
/// it was paused) is theirs, and this process starts no further step of it; a state that can
/// no longer record progress (full, read-only, locked) starts no more items.
fn spawn_item(
    tasks: &mut JoinSet<Result<ItemReport, EngineError>>,
    shared: &Arc<Shared>,
    id: ItemId,
    slot: Arc<Slot>,
    run: impl Future<Output = Result<ItemReport, EngineError>> + Send + 'static,
) {
    let shared = Arc::clone(shared);
    tasks.spawn(async move {
        let result = match run.await {
            Err(EngineError::State(StateError::LeaseLost { .. })) => {
                tracing::warn!(item = id, "Another worker took this item over (this worker's lease had expired): leaving it to them.");
                Ok(ItemReport {
                    taken_over: true,
                    ..ItemReport::default()
                })
            }
            result => result,
        };
        if matches!(result, Err(EngineError::State(_))) {
            shared.halt.store(true, Ordering::SeqCst);
        }
        slot.free();
        result
    });
}

fn absorb(
    joined: Result<Result<ItemReport, EngineError>, tokio::task::JoinError>,
    report: &mut RunReport,
) -> Result<(), EngineError> {
    let item = match joined {
        Ok(result) => result?,
        // Aborted by a second Ctrl-C: the item stays `running` and is redone on resume.
        Err(join) if join.is_cancelled() => return Ok(()),
        Err(join) => {
            return Err(EngineError::State(StateError::Backend {
                location: "engine".to_owned(),
                message: format!("an item task panicked: {join}"),
            }));
        }
    };
    match item.status {
        Some(Status::Done) => report.done += 1,
        Some(Status::Skipped) => report.skipped += 1,
        Some(Status::Failed) => report.failed += 1,
        _ => {}
    }
    report.children.done += item.children.done;
    report.children.skipped += item.children.skipped;
    report.children.failed += item.children.failed;
    report.bytes += item.bytes;
    report.kept += item.kept;
    report.retries += item.retries;
    report.throttled += item.throttled;
    report.taken_over += u64::from(item.taken_over);
    Ok(())
}
