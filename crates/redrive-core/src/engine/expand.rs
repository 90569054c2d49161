//! `[expand]`: a parent item lists its children into the state, runs them, and sums them up.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Slot;
use super::item::run_item;
use super::report::ItemReport;
use super::{
    EXPAND_STEP, EngineError, LOAD_BATCH, PAGE, Shared, Shutdown, StopLevel, stop_requested,
};
use crate::item::{NewItem, Status, StoredItem};
use crate::source::SourceError;
use crate::state::{StateError, Transition};

/// A parent: record its children (once: a resumed parent is not listed again), run them with
/// at most `per_item` in flight, then sum up: done when every child is done or skipped, failed
/// when any failed, skipped when it has none.
pub(super) async fn run_parent(
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
                Err(ExpandError::Fatal(error)) => return Err(error),
                Err(ExpandError::Source(error)) => {
                    let retryable = matches!(error, SourceError::Io { .. });
                    if retryable && retry < shared.options.retries {
                        retry += 1;
                        report.retries += 1;
                        shared.reporter.retried("expand", false);
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
            let child_shutdown = shutdown.clone();
            let slot = Slot::new(permit);
            children.spawn(async move {
                let result = run_item(&shared_child, child, child_shutdown, &slot).await;
                slot.free();
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
    /// Fatal for the run: two children would write one target.
    Fatal(EngineError),
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
            claim(shared, &batch, parent).await?;
            let added = shared
                .state
                .insert_children(parent.id, std::mem::take(&mut batch))
                .await
                .map_err(ExpandError::State)?;
            shared.reporter.children_loaded(added);
        }
    }
    if !batch.is_empty() {
        claim(shared, &batch, parent).await?;
        let added = shared
            .state
            .insert_children(parent.id, batch)
            .await
            .map_err(ExpandError::State)?;
        shared.reporter.children_loaded(added);
    }
    Ok(())
}

/// The children's targets, claimed before they are recorded (see `load::claim_targets`).
async fn claim(shared: &Shared, batch: &[NewItem], parent: &StoredItem) -> Result<(), ExpandError> {
    super::load::claim_targets(shared, batch, Some(&parent.key))
        .await
        .map_err(|error| match error {
            EngineError::State(error) => ExpandError::State(error),
            other => ExpandError::Fatal(other),
        })
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
            report.kept += child.kept;
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
