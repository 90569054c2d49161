//! One item through its steps: where it starts, each step paced and retried, every transition
//! recorded before the next side effect.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::report::{ItemReport, StepEvent, StepStatus};
use super::{
    Counter, EngineError, PipelineStep, Shared, Shutdown, Slot, StopLevel, stop_requested,
};
use crate::error::{ErrorClass, StepError};
use crate::item::{Fields, Status, StoredItem};
use crate::state::{StateError, TargetClaim, Transition};
use crate::step::{NO_INPUT, Outcome, StepContext};
use crate::throttle::Throttle;

/// Where an item starts: its first unfinished step, or earlier when a file that an earlier
/// step produced has gone (that step is redone, and every step after it).
/// A step that binds fields (`xml`) is redone too: its fields are not in the state.
pub(super) async fn start_step(shared: &Shared, item: &StoredItem) -> Result<usize, EngineError> {
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

/// How an item begins: the step it starts at and the transition that records its start, or
/// `None` when every step already ran.
pub(super) async fn begin(
    shared: &Shared,
    item: &StoredItem,
) -> Result<Option<(usize, Transition)>, EngineError> {
    let first = start_step(shared, item).await?;
    Ok(shared.pipeline.steps.get(first).map(|step| {
        (
            first,
            Transition::Started {
                id: item.id,
                step: first,
                step_name: step.name.clone(),
            },
        )
    }))
}

pub(super) async fn run_item(
    shared: &Shared,
    item: StoredItem,
    shutdown: Shutdown,
    slot: &Slot,
) -> Result<ItemReport, EngineError> {
    match begin(shared, &item).await? {
        Some((first, start)) => {
            shared.state.record(start).await?;
            run_started(shared, item, first, shutdown, slot).await
        }
        None => all_ran(shared, &item).await,
    }
}

/// An item whose every step already ran (the plan's fingerprint prevents this unless the state
/// was edited by hand): it is done.
pub(super) async fn all_ran(shared: &Shared, item: &StoredItem) -> Result<ItemReport, EngineError> {
    shared
        .state
        .record(Transition::Finished {
            id: item.id,
            status: Status::Done,
            bytes: 0,
            reason: None,
            output: None,
        })
        .await?;
    Ok(ItemReport {
        status: Some(Status::Done),
        ..ItemReport::default()
    })
}

/// Claims the target of step `index` for this item when it renders from fields a step bound
/// (those of the items' own fields were claimed as they loaded), once per run of the step:
/// the error that fails the item when another key holds it.
async fn claim_bound_target(
    shared: &Shared,
    index: usize,
    item: &StoredItem,
    fields: &Fields,
    claimed: &mut bool,
) -> Result<Option<StepError>, EngineError> {
    let Some(target) = shared.pipeline.steps[index]
        .target
        .as_ref()
        .filter(|t| t.bound && !*claimed)
    else {
        return Ok(None);
    };
    // A target that does not render fails at the step, saying why.
    let Some(name) = target.of(fields) else {
        return Ok(None);
    };
    let claim = TargetClaim {
        step: index,
        target: name,
        key: super::load::claimant(item.parent_key.as_deref(), &item.key),
    };
    let taken = shared.state.claim_targets(vec![claim]).await?;
    *claimed = true;
    Ok(taken.into_iter().next().map(|(claim, first)| {
        let error = super::load::same_target(shared, &claim, &first);
        StepError::permanent(format!("{error}; the first item keeps it"))
    }))
}

/// Runs an item whose start at step `first` is recorded.
pub(super) async fn run_started(
    shared: &Shared,
    mut item: StoredItem,
    first: usize,
    mut shutdown: Shutdown,
    slot: &Slot,
) -> Result<ItemReport, EngineError> {
    let steps = &shared.pipeline.steps;
    let state = &shared.state;
    let mut report = ItemReport::default();

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
            status: StepStatus::Running,
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
        let mut claimed = false;
        let outcome = loop {
            let attempt = match step.require(&fields).await {
                Ok(Some(bound)) => {
                    fields.extend(bound);
                    match claim_bound_target(shared, index, &item, &fields, &mut claimed).await? {
                        Some(taken) => Err(taken),
                        None => paced(shared, index, step.run(&fields, &cx)).await,
                    }
                }
                Ok(None) => Ok(Outcome::Skipped(NO_INPUT.into())),
                Err(error) => Err(error),
            };
            // A step that cannot work at all (a closed port, refused credentials: its first
            // calls all fail that way) stops the run instead of failing every item in turn.
            let health = &shared.health[index];
            let attempt = match attempt {
                Ok(outcome) => {
                    health.succeeded();
                    Ok(outcome)
                }
                Err(error) if error.is_systemic() && shared.halt.load(Ordering::SeqCst) => {
                    // The run is stopping for this very reason: not this item's fault.
                    state
                        .record(Transition::Released {
                            id: item.id,
                            error: error.chain(),
                        })
                        .await?;
                    return Ok(report);
                }
                Err(error) if error.is_systemic() && health.failed_systemically() => {
                    Err(error.with_class(ErrorClass::Fatal))
                }
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
                    shared.reporter.retried(name, throttled);
                    let delay = shared
                        .options
                        .backoff
                        .delay(retry, error.retry_after(), &mut rng);
                    tracing::info!(key = %crate::secrets::redact(&item.key), step = %name, retry, ?delay, error = %error.chain(), "Retrying.");
                    // A stop request does not wait out retries (a throttle storm can last
                    // minutes, and Kubernetes kills 30 s after SIGTERM): the item is left
                    // `running` at this step, and the next run carries on with it.
                    let stopped = tokio::select! {
                        _ = tokio::time::sleep(delay) => false,
                        _ = stop_requested(&mut shutdown, StopLevel::Drain) => true,
                    };
                    if stopped {
                        tracing::info!(key = %crate::secrets::redact(&item.key), step = %name, "Stopping: the item waits for the next run.");
                        return Ok(report);
                    }
                    // Another item stopped the run (a fatal error): no more attempts.
                    if shared.halt.load(Ordering::SeqCst) {
                        state
                            .record(Transition::Released {
                                id: item.id,
                                error: error.chain(),
                            })
                            .await?;
                        return Ok(report);
                    }
                    // A retry is a new side effect: not if another worker took the item over
                    // while this one slept (or was paused).
                    if !state.holds(item.id).await? {
                        return Err(StateError::LeaseLost { id: item.id }.into());
                    }
                }
                Err(error) => break Err(error),
            }
        };
        // With `--max-errors`, an item keeps its slot until it is settled: a failure found
        // then must stop the run before another item is admitted.
        let early = index + 1 == steps.len() && shared.options.max_errors.is_none();
        let outcome = settle(outcome, slot, early).await;
        let mut event = StepEvent {
            key: &item.key,
            parent: item.parent_key.as_deref(),
            step: name,
            status: StepStatus::Done,
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
                report.kept += u64::from(done.kept);
                event.bytes = done.bytes;
                event.output = done.output.as_ref().map(|o| o.path.as_str());
                event.target = done.target.as_deref();
                match steps.get(index + 1) {
                    Some(PipelineStep {
                        name: next_name, ..
                    }) => {
                        state
                            .record(Transition::Advanced {
                                id: item.id,
                                step: index + 1,
                                step_name: next_name.clone(),
                                bytes: done.bytes,
                                output: done.output.clone(),
                            })
                            .await?
                    }
                    None => {
                        let finished = Transition::Finished {
                            id: item.id,
                            status: Status::Done,
                            bytes: done.bytes,
                            reason: None,
                            output: done.output.clone(),
                        };
                        record_last(shared, slot, &item, finished).await?
                    }
                };
                shared.step_times.note(index, event.seconds);
                shared.reporter.step(&event);
            }
            Ok(Outcome::Skipped(reason)) => {
                let skipped = Transition::Finished {
                    id: item.id,
                    status: Status::Skipped,
                    bytes: 0,
                    reason: Some(reason.clone().into_owned()),
                    output: None,
                };
                record_last(shared, slot, &item, skipped).await?;
                event.status = StepStatus::Skipped;
                event.error = Some(&reason);
                shared.step_times.note(index, event.seconds);
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
                let failed = Transition::Failed {
                    id: item.id,
                    error: message.clone(),
                };
                record_last(shared, slot, &item, failed).await?;
                event.status = StepStatus::Failed;
                event.error_class = Some(error.class());
                event.error = Some(&message);
                shared.step_times.note(index, event.seconds);
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

/// Waits for what a finished step left to settle (a local copy's file named and made
/// durable). With `free_slot` (after the item's last step) the slot goes to the next item
/// meanwhile: the item is recorded only once settled; a crash before leaves it `running`,
/// redone on resume.
async fn settle(
    outcome: Result<Outcome, StepError>,
    slot: &Slot,
    free_slot: bool,
) -> Result<Outcome, StepError> {
    match outcome {
        Ok(Outcome::Done(mut done)) => match done.settle.take() {
            Some(settle) => {
                if free_slot {
                    slot.free();
                }
                settle.wait().await
            }
            None => Ok(Outcome::Done(done)),
        },
        other => other,
    }
}

/// Records an item's last transition, then gives its slot back. The slot waits for the
/// commit: the next item may already have its start recorded (see `feed`) and would run at
/// once, so a slot given back earlier let more side effects than there are slots be made and
/// not yet recorded at a crash (`crash::an_http_step_killed_…` found 287 submitted twice
/// against a bound of 240).
async fn record_last(
    shared: &Shared,
    slot: &Slot,
    item: &StoredItem,
    transition: Transition,
) -> Result<(), StateError> {
    let failed = matches!(transition, Transition::Failed { .. });
    let committed = shared.state.queue(transition);
    if failed {
        count_failure(shared, item);
    }
    let result = committed.await;
    slot.free();
    result
}

/// Runs one attempt of step `index` under its adaptive limit and the run's rate, and tells
/// the limit how the endpoint answered.
pub(super) async fn paced<T>(
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

pub(super) fn finished(shared: &Shared, item: &StoredItem, status: Status) {
    if item.parent.is_some() {
        shared.reporter.child_finished(status);
    } else {
        shared.reporter.finished(status);
    }
}

/// Counts a top-level item's failure against `--max-errors`, before its slot is given back:
/// the item that reaches the limit stops the run before another is admitted.
fn count_failure(shared: &Shared, item: &StoredItem) {
    if item.parent.is_some() {
        return;
    }
    let failed = shared.failed.fetch_add(1, Ordering::SeqCst) + 1;
    if shared.options.max_errors.is_some_and(|max| failed >= max) {
        // Enough: start no more items (those in flight end as they can).
        shared.too_many_errors.store(true, Ordering::SeqCst);
        shared.halt.store(true, Ordering::SeqCst);
    }
}
