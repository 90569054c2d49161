//! The engine: loads the source into the state, then runs each runnable item's steps with
//! bounded concurrency, recording every transition before the item's next step.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

use crate::error::{ErrorClass, StepError};
use crate::item::{Fields, NewItem, Status, StoredItem};
use crate::retry::Backoff;
use crate::source::{Source, SourceError};
use crate::state::{StateError, StateStore, Transition};
use crate::step::{ByteCounter, NO_INPUT, ObjectProgress, Outcome, Step, StepContext, StepTraits};
use crate::template::{Template, TemplateError};
use crate::throttle::{AdaptiveLimit, LimitReport, Rate, Throttle};

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
}

impl PipelineStep {
    /// A step with default traits (paced by the engine, no bound fields, no batches).
    pub fn new(name: impl Into<String>, step: Arc<dyn Step>) -> Self {
        Self {
            name: name.into(),
            step,
            traits: StepTraits::default(),
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

/// Receives progress events. Called from many tasks at once.
pub trait Reporter: Send + Sync {
    /// `n` new items were added to the state by the source.
    fn loaded(&self, n: u64);
    /// An item reached a final status in this run.
    fn finished(&self, status: Status);
    /// Bytes moved.
    fn bytes(&self, n: u64);
    /// A large object starts moving (see [`ByteCounter::object`]).
    fn object(&self, _name: &str, _size: Option<u64>) -> Option<Box<dyn ObjectProgress>> {
        None
    }
    /// A step is retried; `throttled` when the store asked to slow down.
    fn retried(&self, throttled: bool);
    /// A step of an item finished (done, skipped or failed), after it was recorded.
    fn step(&self, _event: &StepEvent<'_>) {}
    /// `n` new children were recorded by an expansion.
    fn children_loaded(&self, _n: u64) {}
    /// A child reached a final status in this run.
    fn child_finished(&self, _status: Status) {}
}

/// One step of one item, as `--telemetry` writes it.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// The item's key.
    pub key: &'a str,
    /// The parent's key, for children.
    pub parent: Option<&'a str>,
    /// The step's name.
    pub step: &'a str,
    /// `running` (the step starts), `done`, `skipped` or `failed`.
    pub status: &'static str,
    /// Wall time of the step, retries included.
    pub seconds: f64,
    /// Bytes moved.
    pub bytes: u64,
    /// A file the step produced.
    pub output: Option<&'a str>,
    /// Where the step wrote or sent.
    pub target: Option<&'a str>,
    /// The class of the error, for failures.
    pub error_class: Option<ErrorClass>,
    /// The error (failed) or the reason (skipped), secrets masked.
    pub error: Option<&'a str>,
}

/// A reporter that ignores everything.
#[derive(Debug, Default)]
pub struct NoReport;

impl Reporter for NoReport {
    fn loaded(&self, _: u64) {}
    fn finished(&self, _: Status) {}
    fn bytes(&self, _: u64) {}
    fn retried(&self, _: bool) {}
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunReport {
    /// Items that finished `done` in this run.
    pub done: u64,
    /// Items skipped in this run.
    pub skipped: u64,
    /// Items failed in this run.
    pub failed: u64,
    /// Children done, skipped and failed in this run (under `[expand]`).
    pub children: Tally,
    /// Bytes moved in this run.
    pub bytes: u64,
    /// Step retries.
    pub retries: u64,
    /// Retries caused by throttling.
    pub throttled: u64,
    /// Each step's adaptive concurrency limit: how low throttling drove it, and the throttled
    /// responses it saw (those retried on the spot included). Steps that pace themselves have
    /// none.
    pub limits: Vec<(String, LimitReport)>,
    /// Wall time of the run.
    pub duration: Duration,
    /// Stopped by a signal before every item was run.
    pub interrupted: bool,
}

/// Counts of final statuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Done.
    pub done: u64,
    /// Skipped.
    pub skipped: u64,
    /// Failed.
    pub failed: u64,
}

impl Tally {
    fn add(&mut self, status: Option<Status>) {
        match status {
            Some(Status::Done) => self.done += 1,
            Some(Status::Skipped) => self.skipped += 1,
            Some(Status::Failed) => self.failed += 1,
            _ => {}
        }
    }
}

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
    pipeline: Arc<Pipeline>,
    state: Arc<dyn StateStore>,
    reporter: Arc<dyn Reporter>,
    options: RunOptions,
    /// One adaptive limit per step (each step talks to one endpoint); `None` for a step that
    /// paces itself.
    limits: Vec<Option<Arc<AdaptiveLimit>>>,
    /// `--rate`.
    rate: Option<Rate>,
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

#[derive(Default)]
struct ItemReport {
    status: Option<Status>,
    children: Tally,
    bytes: u64,
    retries: u64,
    throttled: u64,
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
    let shared = Arc::new(Shared {
        halt: AtomicBool::new(false),
        pipeline,
        state,
        reporter,
        options,
        limits,
        rate,
    });

    // The loader adds the source's items to the state while the runner works through them.
    // It publishes how it ended only after its last insert is committed, so a runner that
    // reads `ENDED_*` before its query sees every item.
    let loaded = Arc::new(Notify::new());
    let loader_end = Arc::new(AtomicU8::new(LOADING));
    let (stop_loader, stop_loader_rx) = watch::channel(false);
    let loader = if shared.state.source_complete().await? {
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

    let semaphore = Arc::new(Semaphore::new(shared.options.concurrency.max(1)));
    let mut tasks: JoinSet<Result<ItemReport, EngineError>> = JoinSet::new();
    let mut report = RunReport::default();
    let mut failure: Option<EngineError> = None;
    let mut cursor = 0;
    let mut taken = 0u64;

    'feed: loop {
        if *shutdown.borrow() != StopLevel::Run {
            report.interrupted = true;
            break;
        }
        while let Some(joined) = tasks.try_join_next() {
            if let Err(error) = absorb(joined, &mut report) {
                failure = Some(error);
                break 'feed;
            }
        }
        let loader_was = loader_end.load(Ordering::SeqCst);
        let page = shared.state.claim(cursor, PAGE).await?;
        if page.is_empty() {
            if loader_was != LOADING && !shared.state.others_busy().await? {
                // Complete: nothing is left. Stopped early (an error, or `--limit` reached
                // elsewhere): its error is reported below.
                break;
            }
            tokio::select! {
                _ = loaded.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop_requested(&mut shutdown, StopLevel::Drain) => {}
            }
            continue;
        }
        // Large fields left out of the state (an SQL row's XML) are read a few items at a
        // time, just before the items run: memory stays at (in flight + chunk) rows.
        let mut page = page.into_iter();
        let chunk = shared.options.concurrency.clamp(16, PAGE);
        loop {
            let mut items: Vec<StoredItem> = page.by_ref().take(chunk).collect();
            if items.is_empty() {
                break;
            }
            shared.pipeline.source.hydrate(&mut items).await?;
            for item in items {
                cursor = item.id;
                if shared.options.limit.is_some_and(|limit| taken >= limit) {
                    break 'feed;
                }
                let permit = tokio::select! {
                    permit = Arc::clone(&semaphore).acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break 'feed,
                    },
                    _ = stop_requested(&mut shutdown, StopLevel::Drain) => {
                        report.interrupted = true;
                        break 'feed;
                    }
                };
                if shared.halt.load(Ordering::SeqCst) {
                    break 'feed;
                }
                taken += 1;
                let shared = Arc::clone(&shared);
                let shutdown = shutdown.clone();
                tasks.spawn(async move {
                    let result = if shared.pipeline.expand.is_some() {
                        run_parent(&shared, item, shutdown).await
                    } else {
                        run_item(&shared, item).await
                    };
                    // Progress can no longer be recorded (a full, read-only or locked state):
                    // start no more items; those in flight end as they can.
                    if matches!(result, Err(EngineError::State(_))) {
                        shared.halt.store(true, Ordering::SeqCst);
                    }
                    drop(permit);
                    result
                });
            }
        }
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
    shared.state.flush().await?;
    // Best effort: leases not given back expire on their own.
    let _ = shared.state.release_claims().await;
    report.duration = started.elapsed();
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
    report.retries += item.retries;
    report.throttled += item.throttled;
    Ok(())
}

/// How often a process without the loader role looks whether the source is complete.
const LOADER_POLL: Duration = Duration::from_millis(250);

/// `Ok(true)` once this process holds the loader role; `Ok(false)` when another process
/// completed the source first.
async fn load_or_wait(
    shared: &Shared,
    loaded: &Notify,
    mut stop: watch::Receiver<bool>,
) -> Result<bool, EngineError> {
    loop {
        if shared.state.take_loader_role().await? {
            return Ok(true);
        }
        if shared.state.source_complete().await? {
            return Ok(false);
        }
        // Items the loader adds meanwhile are claimed by the runner's polling.
        loaded.notify_waiters();
        tokio::select! {
            _ = tokio::time::sleep(LOADER_POLL) => {}
            _ = stop.changed() => return Err(EngineError::Stopped),
        }
    }
}

async fn load(
    shared: &Shared,
    loaded: &Notify,
    mut stop: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    // A source that can seek resumes after the last item recorded; others are read again.
    let source = &shared.pipeline.source;
    let resumed = match shared.state.last_item().await? {
        Some(last) => source.items_after(&last.fields),
        None => None,
    };
    let mut items = resumed.unwrap_or_else(|| source.items(&Fields::new()));
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    let result = loop {
        // Hand over what we have whenever the source would make us wait (a slow listing), so
        // the runner never idles while items sit in this batch.
        let next = match items.next().now_or_never() {
            Some(next) => next,
            None => {
                flush(shared, loaded, &mut batch).await?;
                tokio::select! {
                    next = items.next() => next,
                    _ = stop.changed() => break Err(EngineError::Stopped),
                }
            }
        };
        let fields = match next {
            None => break Ok(()),
            Some(Err(error)) => break Err(EngineError::Source(error)),
            Some(Ok(fields)) => fields,
        };
        match shared.pipeline.key.render(&fields) {
            Ok(key) => batch.push(NewItem { key, fields }),
            Err(error) => break Err(EngineError::Key(error)),
        }
        if batch.len() >= LOAD_BATCH {
            flush(shared, loaded, &mut batch).await?;
        }
    };
    // The items read before an error are recorded (and run): fixing the input resumes.
    flush(shared, loaded, &mut batch).await?;
    result?;
    shared.state.set_source_complete().await?;
    Ok(())
}

async fn flush(
    shared: &Shared,
    loaded: &Notify,
    batch: &mut Vec<NewItem>,
) -> Result<(), EngineError> {
    if batch.is_empty() {
        return Ok(());
    }
    let added = shared.state.insert(std::mem::take(batch)).await?;
    shared.reporter.loaded(added);
    loaded.notify_waiters();
    Ok(())
}

/// A parent: record its children (once: a resumed parent is not listed again), run them with
/// at most `per_item` in flight, then sum up: done when every child is done or skipped, failed
/// when any failed, skipped when it has none.
async fn run_parent(
    shared: &Arc<Shared>,
    parent: StoredItem,
    mut shutdown: Shutdown,
) -> Result<ItemReport, EngineError> {
    let state = &shared.state;
    let mut report = ItemReport::default();
    state
        .record(Transition::Started {
            id: parent.id,
            step: 0,
            step_name: EXPAND_STEP.to_owned(),
        })
        .await?;

    if !parent.expanded {
        let mut retry = 0;
        let mut rng = fastrand::Rng::new();
        loop {
            match expand(shared, &parent).await {
                Ok(()) => break,
                Err(ExpandError::State(error)) => return Err(error.into()),
                Err(ExpandError::Source(error)) => {
                    let retryable = matches!(error, SourceError::Io { .. });
                    if retryable && retry < shared.options.retries {
                        retry += 1;
                        report.retries += 1;
                        shared.reporter.retried(false);
                        let delay = shared.options.backoff.delay(retry, None, &mut rng);
                        tracing::info!(key = %crate::secrets::redact(&parent.key), retry, ?delay, error = %error, "Retrying the expansion.");
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    let message = crate::secrets::redact(&format!(
                        "cannot list the children of `{}`: {}",
                        parent.key,
                        chain(&error)
                    ))
                    .into_owned();
                    tracing::warn!(error = %message, "Item failed.");
                    state
                        .record(Transition::Failed {
                            id: parent.id,
                            error: message,
                        })
                        .await?;
                    report.status = Some(Status::Failed);
                    shared.reporter.finished(Status::Failed);
                    return Ok(report);
                }
            }
        }
        state.set_expanded(parent.id).await?;
    }

    let semaphore = Arc::new(Semaphore::new(shared.options.per_item.max(1)));
    let mut children: JoinSet<Result<ItemReport, EngineError>> = JoinSet::new();
    let mut cursor = 0;
    let mut stopped = false;
    let mut failure = None;
    'feed: loop {
        let page = state.runnable_children(parent.id, cursor, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for child in page {
            cursor = child.id;
            let permit = tokio::select! {
                permit = Arc::clone(&semaphore).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break 'feed,
                },
                _ = stop_requested(&mut shutdown, StopLevel::Drain) => {
                    stopped = true;
                    break 'feed;
                }
            };
            if shared.halt.load(Ordering::SeqCst) {
                stopped = true;
                break 'feed;
            }
            while let Some(joined) = children.try_join_next() {
                tally_child(joined, &mut report, &mut failure);
            }
            let shared_child = Arc::clone(shared);
            children.spawn(async move {
                let result = run_item(&shared_child, child).await;
                drop(permit);
                result
            });
        }
    }
    while let Some(joined) = children.join_next().await {
        tally_child(joined, &mut report, &mut failure);
    }
    if let Some(error) = failure {
        return Err(error);
    }
    if stopped || *shutdown.borrow() != StopLevel::Run {
        // The parent stays `running`: the next run carries on with its unfinished children.
        return Ok(report);
    }

    let counts = state.child_counts(parent.id).await?;
    let transition = if counts.failed > 0 {
        Transition::Failed {
            id: parent.id,
            error: format!("{} of {} children failed", counts.failed, counts.total),
        }
    } else if counts.total == 0 {
        Transition::Finished {
            id: parent.id,
            status: Status::Skipped,
            bytes: 0,
            reason: Some("no children".to_owned()),
            output: None,
        }
    } else {
        Transition::Finished {
            id: parent.id,
            status: Status::Done,
            bytes: 0,
            reason: None,
            output: None,
        }
    };
    let status = match &transition {
        Transition::Failed { .. } => Status::Failed,
        Transition::Finished { status, .. } => *status,
        _ => Status::Done,
    };
    state.record(transition).await?;
    report.status = Some(status);
    shared.reporter.finished(status);
    Ok(report)
}

enum ExpandError {
    Source(SourceError),
    State(StateError),
}

/// Streams the parent's children into the state in batches. Idempotent: a retry after a
/// partial listing inserts only what is missing.
async fn expand(shared: &Shared, parent: &StoredItem) -> Result<(), ExpandError> {
    let Some(expansion) = &shared.pipeline.expand else {
        return Ok(());
    };
    let mut children = expansion.source.items(&parent.fields);
    let mut batch = Vec::with_capacity(LOAD_BATCH);
    while let Some(child) = children.next().await {
        let child = child.map_err(ExpandError::Source)?;
        // Children inherit their parent's fields; their own win on a clash.
        let mut fields = parent.fields.clone();
        fields.extend(child);
        let key = expansion.key.render(&fields).map_err(|e| {
            ExpandError::Source(SourceError::Input {
                location: parent.key.clone(),
                message: e.to_string(),
            })
        })?;
        batch.push(NewItem { key, fields });
        if batch.len() >= LOAD_BATCH {
            let added = shared
                .state
                .insert_children(parent.id, std::mem::take(&mut batch))
                .await
                .map_err(ExpandError::State)?;
            shared.reporter.children_loaded(added);
        }
    }
    if !batch.is_empty() {
        let added = shared
            .state
            .insert_children(parent.id, batch)
            .await
            .map_err(ExpandError::State)?;
        shared.reporter.children_loaded(added);
    }
    Ok(())
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

fn tally_child(
    joined: Result<Result<ItemReport, EngineError>, tokio::task::JoinError>,
    report: &mut ItemReport,
    failure: &mut Option<EngineError>,
) {
    match joined {
        Ok(Ok(child)) => {
            report.children.add(child.status);
            report.bytes += child.bytes;
            report.retries += child.retries;
            report.throttled += child.throttled;
        }
        Ok(Err(error)) => {
            failure.get_or_insert(error);
        }
        Err(join) if join.is_cancelled() => {}
        Err(join) => {
            failure.get_or_insert(EngineError::State(StateError::Backend {
                location: "engine".to_owned(),
                message: format!("a child task panicked: {join}"),
            }));
        }
    }
}

/// Where an item starts: its first unfinished step, or earlier when a file that an earlier
/// step produced has gone (that step is redone, and every step after it).
/// A step that binds fields (`xml`) is redone too: its fields are not in the state.
async fn start_step(shared: &Shared, item: &StoredItem) -> Result<usize, EngineError> {
    if item.step == 0 {
        return Ok(0);
    }
    let mut first = item.step;
    let outputs = shared.state.outputs(item.id).await?;
    for (step, produced) in outputs {
        if step < first && !std::path::Path::new(&produced.path).exists() {
            tracing::info!(key = %crate::secrets::redact(&item.key), step, path = %produced.path, "Output gone: redoing the step.");
            first = step;
            break;
        }
    }
    let steps = &shared.pipeline.steps;
    if let Some(binds) = steps[..first.min(steps.len())]
        .iter()
        .position(|step| step.traits.binds_fields)
    {
        first = binds;
    }
    Ok(first)
}

async fn run_item(shared: &Shared, mut item: StoredItem) -> Result<ItemReport, EngineError> {
    let steps = &shared.pipeline.steps;
    let state = &shared.state;
    let mut report = ItemReport::default();
    let first = start_step(shared, &item).await?;
    let Some(PipelineStep {
        name: first_name, ..
    }) = steps.get(first)
    else {
        // Every step already ran (the plan's fingerprint prevents this unless edited by hand).
        state
            .record(Transition::Finished {
                id: item.id,
                status: Status::Done,
                bytes: 0,
                reason: None,
                output: None,
            })
            .await?;
        report.status = Some(Status::Done);
        return Ok(report);
    };
    state
        .record(Transition::Started {
            id: item.id,
            step: first,
            step_name: first_name.clone(),
        })
        .await?;

    // Fields that earlier steps' `require` bound (e.g. `input`) are bound again on resume.
    let mut fields = std::mem::take(&mut item.fields);
    for PipelineStep { step, .. } in &steps[..first] {
        if let Ok(Some(bound)) = step.require(&fields).await {
            fields.extend(bound);
        }
    }

    let counter = Counter(shared.reporter.as_ref());
    let mut rng = fastrand::Rng::new();
    for index in first..steps.len() {
        let PipelineStep { name, step, .. } = &steps[index];
        let cx = StepContext {
            bytes: &counter,
            key: &item.key,
            throttle: Throttle::of(shared.limits.get(index).and_then(Option::clone)),
        };
        let started = Instant::now();
        shared.reporter.step(&StepEvent {
            key: &item.key,
            parent: item.parent_key.as_deref(),
            step: name,
            status: "running",
            seconds: 0.0,
            bytes: 0,
            output: None,
            target: None,
            error_class: None,
            error: None,
        });
        // Every retry makes the backoff longer; only retries for errors other than throttling
        // count against `retries`. Throttling has a time budget instead: a long throttle storm
        // slows the run down rather than failing its items.
        let mut retry = 0;
        let mut counted = 0;
        let outcome = loop {
            let attempt = match step.require(&fields).await {
                Ok(Some(bound)) => {
                    fields.extend(bound);
                    paced(shared, index, step.run(&fields, &cx)).await
                }
                Ok(None) => Ok(Outcome::Skipped(NO_INPUT.into())),
                Err(error) => Err(error),
            };
            match attempt {
                Ok(outcome) => break Ok(outcome),
                Err(error)
                    if (error.class() == ErrorClass::Throttled
                        && started.elapsed() < shared.options.throttle_budget)
                        || (error.class().is_retryable() && counted < shared.options.retries) =>
                {
                    retry += 1;
                    let throttled = error.class() == ErrorClass::Throttled;
                    if !throttled {
                        counted += 1;
                    }
                    report.retries += 1;
                    report.throttled += u64::from(throttled);
                    shared.reporter.retried(throttled);
                    let delay = shared
                        .options
                        .backoff
                        .delay(retry, error.retry_after(), &mut rng);
                    tracing::info!(key = %crate::secrets::redact(&item.key), step = %name, retry, ?delay, error = %error.chain(), "Retrying.");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => break Err(error),
            }
        };
        let mut event = StepEvent {
            key: &item.key,
            parent: item.parent_key.as_deref(),
            step: name,
            status: "done",
            seconds: started.elapsed().as_secs_f64(),
            bytes: 0,
            output: None,
            target: None,
            error_class: None,
            error: None,
        };
        match outcome {
            Ok(Outcome::Done(mut done)) => {
                fields.append(&mut done.fields);
                report.bytes += done.bytes;
                event.bytes = done.bytes;
                event.output = done.output.as_ref().map(|o| o.path.as_str());
                event.target = done.target.as_deref();
                let transition = match steps.get(index + 1) {
                    Some(PipelineStep {
                        name: next_name, ..
                    }) => Transition::Advanced {
                        id: item.id,
                        step: index + 1,
                        step_name: next_name.clone(),
                        bytes: done.bytes,
                        output: done.output.clone(),
                    },
                    None => Transition::Finished {
                        id: item.id,
                        status: Status::Done,
                        bytes: done.bytes,
                        reason: None,
                        output: done.output.clone(),
                    },
                };
                state.record(transition).await?;
                shared.reporter.step(&event);
            }
            Ok(Outcome::Skipped(reason)) => {
                state
                    .record(Transition::Finished {
                        id: item.id,
                        status: Status::Skipped,
                        bytes: 0,
                        reason: Some(reason.clone().into_owned()),
                        output: None,
                    })
                    .await?;
                event.status = "skipped";
                event.error = Some(&reason);
                shared.reporter.step(&event);
                report.status = Some(Status::Skipped);
                finished(shared, &item, Status::Skipped);
                return Ok(report);
            }
            Err(error) if error.class() == ErrorClass::Fatal => {
                // Not this item's fault, and no other item would get further: put it back
                // and stop the run.
                shared.halt.store(true, Ordering::SeqCst);
                let message = error.chain();
                state
                    .record(Transition::Released {
                        id: item.id,
                        error: message,
                    })
                    .await?;
                return Err(EngineError::Fatal {
                    step: name.clone(),
                    key: item.key,
                    source: error,
                });
            }
            Err(error) => {
                let message = error.chain();
                tracing::warn!(key = %crate::secrets::redact(&item.key), step = %name, error = %message, "Item failed.");
                state
                    .record(Transition::Failed {
                        id: item.id,
                        error: message.clone(),
                    })
                    .await?;
                event.status = "failed";
                event.error_class = Some(error.class());
                event.error = Some(&message);
                shared.reporter.step(&event);
                report.status = Some(Status::Failed);
                finished(shared, &item, Status::Failed);
                return Ok(report);
            }
        }
    }
    report.status = Some(Status::Done);
    finished(shared, &item, Status::Done);
    Ok(report)
}

/// Runs one attempt of step `index` under its adaptive limit and the run's rate, and tells
/// the limit how the endpoint answered.
async fn paced<T>(
    shared: &Shared,
    index: usize,
    call: impl Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    let Some(limit) = shared.limits.get(index).and_then(Option::as_ref) else {
        return call.await;
    };
    let _permit = limit.acquire().await;
    if let Some(rate) = &shared.rate {
        rate.wait().await;
    }
    let result = Throttle::of(Some(Arc::clone(limit))).scope(call).await;
    match &result {
        Ok(_) => limit.succeeded(),
        Err(error) if error.class() == ErrorClass::Throttled => limit.throttled(),
        Err(_) => {}
    }
    result
}

fn finished(shared: &Shared, item: &StoredItem, status: Status) {
    if item.parent.is_some() {
        shared.reporter.child_finished(status);
    } else {
        shared.reporter.finished(status);
    }
}

/// Prints what each item would do, without writing anything: no state, no object. Under
/// `[expand]` each parent's children are listed (a read) and printed as `PARENT/CHILD`.
pub async fn dry_run(
    pipeline: &Pipeline,
    limit: Option<u64>,
    out: &mut (dyn std::io::Write + Send),
) -> Result<u64, EngineError> {
    let mut items = pipeline.source.items(&Fields::new());
    let mut count = 0u64;
    while let Some(fields) = items.next().await {
        if limit.is_some_and(|limit| count >= limit) {
            break;
        }
        let fields = fields?;
        let key = pipeline.key.render(&fields).map_err(EngineError::Key)?;
        count += 1;
        // Large fields left out of the state are read (a read, like the listing).
        let mut item = [StoredItem {
            id: 0,
            parent: None,
            parent_key: None,
            expanded: false,
            key,
            fields,
            step: 0,
            status: Status::Pending,
            attempts: 0,
            error: None,
            bytes: 0,
        }];
        pipeline.source.hydrate(&mut item).await?;
        let [StoredItem { key, fields, .. }] = item;
        let Some(expansion) = &pipeline.expand else {
            if !describe(pipeline, &key, &fields, out).await? {
                break;
            }
            continue;
        };
        let mut children = expansion.source.items(&fields);
        while let Some(child) = children.next().await {
            let mut child_fields = fields.clone();
            child_fields.extend(child?);
            let child_key = expansion
                .key
                .render(&child_fields)
                .map_err(EngineError::Key)?;
            if !describe(pipeline, &format!("{key}/{child_key}"), &child_fields, out).await? {
                return Ok(count);
            }
        }
    }
    Ok(count)
}

/// One line: the key, then each step's action. False when the output is closed. Steps that
/// only compute fields (`xml`) are run, so later steps show what they would get.
async fn describe(
    pipeline: &Pipeline,
    key: &str,
    fields: &Fields,
    out: &mut (dyn std::io::Write + Send),
) -> Result<bool, EngineError> {
    struct Nothing;
    impl ByteCounter for Nothing {
        fn add(&self, _: u64) {}
    }
    let mut fields = std::borrow::Cow::Borrowed(fields);
    let mut line = crate::secrets::redact(key).into_owned();
    for PipelineStep { name, step, traits } in &pipeline.steps {
        let what = step.describe(&fields).map_err(EngineError::Key)?;
        line.push_str(&format!("\t{name}: {}", crate::secrets::redact(&what)));
        if traits.binds_fields {
            let cx = StepContext {
                bytes: &Nothing,
                key,
                throttle: Throttle::none(),
            };
            match step.run(&fields, &cx).await {
                Ok(Outcome::Done(done)) => fields.to_mut().extend(done.fields),
                Ok(Outcome::Skipped(reason)) => {
                    line.push_str(&format!(" → skipped: {reason}"));
                    break;
                }
                Err(error) => {
                    line.push_str(&format!(
                        " → fails: {}",
                        crate::secrets::redact(&error.chain())
                    ));
                    break;
                }
            }
        }
    }
    Ok(writeln!(out, "{line}").is_ok())
}
